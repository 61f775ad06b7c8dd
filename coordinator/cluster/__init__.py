"""Several coordinators on one database (#23): the lease singleton work runs under."""

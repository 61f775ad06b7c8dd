"""Who may do what: the fleet CA, enrolment, join and API tokens, authentication."""

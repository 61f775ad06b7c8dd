"""`moorctl env`: the table rows, pure."""

from __future__ import annotations

from moorctl.envs import env_rows, promotion_rows


def test_environment_rows_show_order_approvals_and_the_current_release() -> None:
    rows = env_rows(
        [
            {
                "id": "e1",
                "name": "production",
                "orderIndex": 3,
                "isProduction": True,
                "requiredApprovals": 2,
                "requireSeparationOfDuties": True,
                "promotionPolicy": "default",
                "currentRelease": {"id": "r", "name": "shop-v1"},
            },
            {"id": "e2", "name": "dev", "orderIndex": 1},
        ]
    )
    assert rows == [
        ["3", "production", "yes", "2", "yes", "default", "shop-v1", "e1"],
        ["1", "dev", "no", "0", "no", "default", "-", "e2"],
    ]


def test_promotion_rows_count_approvals() -> None:
    rows = promotion_rows(
        [
            {
                "id": "p1",
                "environmentId": "0123456789",
                "version": "1",
                "status": "pending_approval",
                "approvals": [{"by": "user:2"}],
                "requiredApprovals": 2,
                "requestedBy": "user:1",
                "message": "",
            }
        ]
    )
    assert rows == [["p1", "01234567", "1", "pending_approval", "1/2", "user:1", ""]]

"""The three roles of UnitScope, each a Django group, and where each lands after logging in."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    RESEARCHER = "researcher"
    EXPERT = "expert"
    CROWD = "crowd"

    @property
    def label(self) -> str:
        return {"researcher": "Researcher", "expert": "Expert annotator", "crowd": "Crowd worker"}[self.value]

    @property
    def home_url_name(self) -> str:
        return {
            "researcher": "analysis:dashboard",
            "expert": "annotation:expert_home",
            "crowd": "annotation:crowd_home",
        }[self.value]


# Apps whose model permissions researchers hold (they run the admin for them). Not ``accounts``: users and groups
# are administered by superusers only (accounts/admin.py).
RESEARCHER_PERMISSION_APPS = ("analysis", "annotation")

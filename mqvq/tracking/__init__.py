"""MLflow tracking for runs, studies and searches."""

from mqvq.tracking.location import home_dir, resolve_tracking_uri
from mqvq.tracking.store import Tracker

__all__ = ["Tracker", "home_dir", "resolve_tracking_uri"]

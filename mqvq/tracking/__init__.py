"""MLflow tracking for runs, studies and searches."""
from mqvq.tracking.store import Tracker, home_dir, resolve_tracking_uri

__all__ = ["Tracker", "home_dir", "resolve_tracking_uri"]

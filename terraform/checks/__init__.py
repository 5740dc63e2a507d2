"""paygate custom checkov checks (see paygate_object_lock.py)."""

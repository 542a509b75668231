"""Serving kms: the gunicorn worker, its limits and the log format (see ``kms.gunicorn_conf``)."""

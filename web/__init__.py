"""The web UI: pages for scheduling staff, technologists, radiologists and admins (issue 7)."""

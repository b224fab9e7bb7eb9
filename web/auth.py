"""Login throttling: django-axes counts failed logins and refuses a locked-out user.

Axes needs the HTTP request to know the client address. Logins without one (test clients,
management commands) have no address to throttle and are passed on to ModelBackend.
"""

from axes.backends import AxesStandaloneBackend


class ThrottledLoginBackend(AxesStandaloneBackend):
    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)

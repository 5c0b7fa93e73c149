from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from django.views.decorators.cache import cache_control
from django.views.static import serve

handler500 = "unitscope.errors.handler500"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("research/", include("analysis.urls")),
    path("api/", include("api.urls")),
    path("", include("annotation.urls")),
    path("", include("accounts.urls")),
]


@cache_control(public=True, max_age=365 * 24 * 3600, immutable=True)
def media(request, path):
    """A rendered grid under MEDIA_ROOT (read now, not at import). Its name is its content's hash, so a browser may
    keep it for good; in production the front web server serves the folder (README, "Production")."""
    return serve(request, path, document_root=settings.MEDIA_ROOT)


if settings.UNITSCOPE_SERVE_MEDIA:
    urlpatterns.append(path(f"{settings.MEDIA_URL.strip('/')}/<path:path>", media))

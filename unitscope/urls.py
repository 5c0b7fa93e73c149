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

if settings.UNITSCOPE_SERVE_MEDIA:
    # Rendered grids under MEDIA_ROOT. Their names are their content's hash, so a browser may keep them for good;
    # in production the front web server serves the folder (README, "Production").
    urlpatterns.append(path(f"{settings.MEDIA_URL.strip('/')}/<path:path>",
                            cache_control(public=True, max_age=365 * 24 * 3600, immutable=True)(serve),
                            {"document_root": settings.MEDIA_ROOT}))

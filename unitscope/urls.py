from django.conf import settings
from django.contrib import admin
from django.urls import include, path
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
    # Rendered grids under MEDIA_ROOT (content-hash names); a web server serves them in production.
    urlpatterns.append(path(f"{settings.MEDIA_URL.strip('/')}/<path:path>", serve,
                            {"document_root": settings.MEDIA_ROOT}))

from django.urls import path

from . import views

app_name = "analysis"
urlpatterns = [
    path("", views.DashboardView.as_view(), name="dashboard"),
    path("runs/", views.RunListView.as_view(), name="run_list"),
    path("runs/<int:pk>/", views.RunDetailView.as_view(), name="run_detail"),
    path("runs/<int:pk>/status/", views.RunStatusView.as_view(), name="run_status"),
    path("runs/<int:pk>/cancel/", views.RunCancelView.as_view(), name="run_cancel"),
    path("selfcheck/", views.SelfcheckStartView.as_view(), name="selfcheck"),
]

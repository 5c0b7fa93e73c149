from django.urls import path

from . import views

app_name = "annotation"
urlpatterns = [
    path("expert/", views.ExpertHomeView.as_view(), name="expert_home"),
    path("expert/studies/<int:pk>/next/", views.ExpertNextTaskView.as_view(), name="expert_next"),
    path("expert/studies/<int:pk>/tasks/<int:task_pk>/", views.AnnotateView.as_view(), name="annotate"),
    path("expert/studies/<int:pk>/answers/", views.MyAnswersView.as_view(), name="my_answers"),
    path("crowd/", views.CrowdHomeView.as_view(), name="crowd_home"),
    path("research/studies/", views.StudyListView.as_view(), name="study_list"),
    path("research/studies/new/", views.StudyCreateView.as_view(), name="study_create"),
    path("research/studies/<int:pk>/", views.StudyDetailView.as_view(), name="study_detail"),
    path("research/studies/<int:pk>/report/", views.StudyReportView.as_view(), name="study_report"),
    path("research/studies/<int:pk>/synonyms/", views.StudySynonymsView.as_view(), name="study_synonyms"),
    path("research/studies/<int:pk>/judgments.csv", views.StudyExportView.as_view(), name="study_export"),
]

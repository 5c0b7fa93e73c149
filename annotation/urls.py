"""The annotation app's pages: the expert wing's and the crowd wing's views, under one URL namespace."""

from django.urls import path

from .crowd import forced_choice_views as crowd_fc_views
from .crowd import report_views as crowd_report_views
from .crowd import views as crowd_views
from .expert import views as expert_views

app_name = "annotation"
urlpatterns = [
    path("expert/", expert_views.ExpertHomeView.as_view(), name="expert_home"),
    path("expert/studies/<int:pk>/next/", expert_views.ExpertNextTaskView.as_view(), name="expert_next"),
    path("expert/studies/<int:pk>/tasks/<int:task_pk>/", expert_views.AnnotateView.as_view(), name="annotate"),
    path("expert/studies/<int:pk>/answers/", expert_views.MyAnswersView.as_view(), name="my_answers"),
    path("crowd/", crowd_views.CrowdHomeView.as_view(), name="crowd_home"),
    path("crowd/s/<str:token>/", crowd_views.CrowdEntryView.as_view(), name="crowd_entry"),
    path("crowd/s/<str:token>/<str:adapter>/", crowd_views.CrowdEntryView.as_view(), name="crowd_entry_adapter"),
    path("crowd/w/<str:code>/", crowd_views.CrowdNextView.as_view(), name="crowd_next"),
    path("crowd/w/<str:code>/qualification/", crowd_views.CrowdQualificationView.as_view(), name="crowd_qualification"),
    path("crowd/w/<str:code>/practice/", crowd_fc_views.CrowdPracticeView.as_view(), name="crowd_practice"),
    path("crowd/w/<str:code>/a/<str:assignment>/", crowd_views.CrowdTaskView.as_view(), name="crowd_task"),
    path("crowd/w/<str:code>/a/<str:assignment>/done/", crowd_views.CrowdAfterView.as_view(), name="crowd_after"),
    path("crowd/w/<str:code>/a/<str:assignment>/return/", crowd_views.CrowdReturnView.as_view(), name="crowd_return"),
    path("crowd/w/<str:code>/a/<str:assignment>/image.png", crowd_views.CrowdImageView.as_view(), name="crowd_image"),
    path("research/crowd/", crowd_views.CrowdStudyListView.as_view(), name="crowd_study_list"),
    path("research/crowd/new/", crowd_views.CrowdStudyCreateView.as_view(), name="crowd_study_create"),
    path("research/crowd/<int:pk>/", crowd_views.CrowdStudyDetailView.as_view(), name="crowd_study_detail"),
    path("research/crowd/<int:pk>/workers/", crowd_views.CrowdWorkersView.as_view(), name="crowd_workers"),
    path("research/crowd/<int:pk>/review/", crowd_views.CrowdReviewView.as_view(), name="crowd_review"),
    path(
        "research/crowd/<int:pk>/exports/<str:name>",
        crowd_views.CrowdStudyExportView.as_view(),
        name="crowd_study_export",
    ),
    path("research/crowd/<int:pk>/report/", crowd_report_views.CrowdReportView.as_view(), name="crowd_report"),
    path(
        "research/crowd/<int:pk>/report/table3/",
        crowd_report_views.CrowdTable3View.as_view(),
        name="crowd_report_table3",
    ),
    path(
        "research/crowd/<int:pk>/report/forced-choice/",
        crowd_report_views.CrowdForcedChoiceView.as_view(),
        name="crowd_report_forced_choice",
    ),
    path(
        "research/crowd/<int:pk>/report/purity/",
        crowd_report_views.CrowdPurityView.as_view(),
        name="crowd_report_purity",
    ),
    path("research/studies/", expert_views.StudyListView.as_view(), name="study_list"),
    path("research/studies/new/", expert_views.StudyCreateView.as_view(), name="study_create"),
    path("research/studies/<int:pk>/", expert_views.StudyDetailView.as_view(), name="study_detail"),
    path("research/studies/<int:pk>/report/", expert_views.StudyReportView.as_view(), name="study_report"),
    path("research/studies/<int:pk>/synonyms/", expert_views.StudySynonymsView.as_view(), name="study_synonyms"),
    path("research/studies/<int:pk>/judgments.csv", expert_views.StudyExportView.as_view(), name="study_export"),
    path(
        "research/studies/<int:pk>/exports/<str:name>", expert_views.StudyExportView.as_view(), name="study_export_file"
    ),
]

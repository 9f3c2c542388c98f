"""URLs of the example Django project."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("query", views.query),
    path("echo", views.echo),
    path("large", views.large),
    path("stream", views.stream),
]

"""Settings of the example Django project: nothing that needs a database or migrations."""

SECRET_KEY = "zeus-example-not-secret"  # an example: never deploy with this key
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS: list[str] = []
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]  # sets Content-Length
ROOT_URLCONF = "examples.django_project.urls"
WSGI_APPLICATION = "examples.django_project.wsgi.application"

DATABASES: dict[str, dict[str, str]] = {}
TEMPLATES: list[dict[str, object]] = []
USE_TZ = True
TIME_ZONE = "UTC"  # Django sets TZ in the environment of every process that loads it

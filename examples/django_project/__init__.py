"""A minimal Django project served by Zeus through its WSGI adapter.

    zeus serve examples.django_project.wsgi:application

No database, no installed apps, no migrations: settings, URLs, views and ``wsgi.py``.
"""

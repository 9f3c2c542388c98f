"""``python -m zeus.worker module:app``: run an application as a Zeus worker."""

from zeus.worker import main

main()

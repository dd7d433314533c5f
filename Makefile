# The two commands of the README: `make demo` (the main job) and `make test`.
.PHONY: demo test lint bench setup

setup:
	bash scripts/bootstrap.sh

demo: setup
	bash scripts/demo.sh

test: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check atft_core dags plugins tests

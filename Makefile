# `make demo` and `make test` create .venv on first use.
# torch comes first, pinned, so pip takes the local build instead of downloading another.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-fast mutants browser clean

# setuptools' notice about editable installs is for package authors; a newcomer cannot act on it.
$(VENV)/.installed: pyproject.toml
	@echo "installing kdsearch and its dependencies into $(VENV) (about 2 minutes, once)"
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q -e ".[test]"
	touch $@

# The main job: the quickstart sweep (8 trials on digits, offline); it ends with the next commands.
# Run again, it continues the sweep it made (--resume) instead of refusing a second one.
demo: $(VENV)/.installed
	$(VENV)/bin/kdsearch sweep search_spaces/quickstart.yaml $(if $(wildcard sweeps/quickstart/sweep.json),--resume)
	@echo "(kdsearch is installed in $(VENV): 'source $(VENV)/bin/activate', then the commands above)"

test: $(VENV)/.installed browser
	$(PY) -m pytest -q --durations=15

test-fast: $(VENV)/.installed   # the inner loop: no Ray, subprocess or browser tests
	$(PY) -m pytest -q -m "not slow"

mutants: $(VENV)/.installed   # deliberate bugs the tests must catch (tests/mutants.py); also part of make test
	$(PY) tests/mutants.py

# The MLflow UI test drives Debian's Chromium: installed here when missing and this is root on
# Debian/Ubuntu, else make stops with one line saying how (a recipe's $(error) fires only when it runs).
HAVE_BROWSER = $(shell command -v chromium >/dev/null && command -v chromedriver >/dev/null && echo yes)
CAN_INSTALL = $(shell [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && echo yes)
browser:
	$(if $(HAVE_BROWSER),,$(if $(CAN_INSTALL),\
	  @echo "make test: installing chromium and chromium-driver (the MLflow UI test drives them)" && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null,\
	  $(error the MLflow UI test needs Chromium: run 'sudo apt-get install chromium chromium-driver', then make test)))

clean:
	rm -rf $(VENV) build *.egg-info

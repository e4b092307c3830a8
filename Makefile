# One-command set-up. `make serve` installs and serves on the embedded defaults; `make test`
# installs and runs every test. Both create their own virtual environment in $(VENV).
#
# TORCH picks the PyTorch build: the default is the CPU wheel. On a CUDA machine use e.g.
#   make serve TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"

VENV   ?= .venv
PYTHON ?= python3
TORCH  ?= torch==2.13.0
ARGS   ?=
BIN    := $(VENV)/bin

.PHONY: install browser serve test lint clean

$(BIN)/sdapi: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	# Pin the torch just installed, so resolving the rest never swaps in another build.
	$(BIN)/pip show torch | sed -n "s/^Version: /torch==/p" > $(VENV)/constraints.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[engine,translate,postgres,s3,dev]"
	touch $@

install: $(BIN)/sdapi

serve: install
	$(BIN)/sdapi serve $(ARGS)

# The web playground's browser tests drive Debian's Chromium and chromedriver (never a browser
# download, which the test machines cannot fetch). Installed here when missing and we are root;
# without them those tests skip (fail under CI=true). `make serve` does not need a browser.
BROWSER_PKGS := chromium chromium-driver
APT_INSTALL  := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends

browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		$(APT_INSTALL) $(BROWSER_PKGS) || { apt-get update -q && $(APT_INSTALL) $(BROWSER_PKGS); }; \
	else echo "chromium/chromedriver missing and not root: the browser tests will skip"; fi

test: install browser
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

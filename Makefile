# The vendor access broker. Two commands for a newcomer: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
NPM    ?= npm
# asciinema-player, from the npm registry (pinned in package-lock.json), served by the broker
# itself: never from a CDN. oidc-provider (a devDependency, never served): the real OpenID
# provider the staff SSO tests run with node (tests/oidc/provider.mjs).
PLAYER := node_modules/asciinema-player/dist/bundle
VENDOR := broker/http/static/vendor

.PHONY: demo test lint typecheck unit integration system-deps static clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (found %s)" % sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

system-deps:
	@scripts/system-deps.sh

node_modules/.package-lock.json: package.json package-lock.json
	@command -v $(NPM) >/dev/null 2>&1 || { echo "npm is missing (install it with: sudo apt-get install npm)" >&2; exit 1; }
	$(NPM) ci --no-audit --no-fund
	@touch $@

$(VENDOR)/asciinema-player.min.js: node_modules/.package-lock.json
	mkdir -p $(VENDOR)
	cp $(PLAYER)/asciinema-player.min.js $(PLAYER)/asciinema-player.css $(VENDOR)/
	cp node_modules/asciinema-player/LICENSE $(VENDOR)/asciinema-player.LICENSE

static: $(VENDOR)/asciinema-player.min.js

demo: $(STAMP) static
	$(BIN)/broker demo

lint: $(STAMP)
	$(BIN)/ruff check broker tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) static
	$(BIN)/pytest tests/unit

integration: system-deps $(STAMP) static
	$(BIN)/pytest tests/integration

test: system-deps $(STAMP) static lint typecheck
	# bytecode written once: PYTHONDONTWRITEBYTECODE (set on these machines) would have
	# every one of the tests' thousands of `broker` commands compile the package anew
	$(BIN)/python -m compileall -q broker tests bench
	$(BIN)/pytest -n 3 --dist loadfile --durations=30

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis node_modules $(VENDOR)

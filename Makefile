# Seekframe: `make run` sets everything up and starts the app; `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOME_DIR ?= $(or $(KB_HOME),data/kb)
PORT ?= 8501
# The app has no sign-in: it listens on this machine only unless told otherwise (`make run ADDRESS=0.0.0.0`).
ADDRESS ?= $(or $(KB_ADDRESS),127.0.0.1)
export ANONYMIZED_TELEMETRY := False

.PHONY: run test venv samples ingest-samples app lint typecheck browser speech-tools clean image image-test lock

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# The bundled embedder's ONNX Runtime graph, exported once at install time (20-45 s) instead of inside the first
# ingest or search; kept inside the environment, made again when kb/embed.py changes its recipe.
$(VENV)/.embed-graph: $(VENV)/.installed kb/embed.py
	$(PY) -m kb.embed
	touch $@

venv: $(VENV)/.installed $(VENV)/.embed-graph

samples: venv
	$(PY) -m data.make_samples data/samples

ingest-samples: samples
	$(PY) -m ingest data/samples --home $(HOME_DIR) || echo "some samples failed to ingest: see above"

app: venv
	$(PY) streamlit_app.py --server.port $(PORT) --server.address $(ADDRESS) --server.headless true \
		--browser.gatherUsageStats false --client.toolbarMode minimal

run: ingest-samples app

lint: venv
	$(VENV)/bin/ruff check .

# Strict type checking of kb/ and ingest/ (settings in pyproject.toml).
typecheck: venv
	$(VENV)/bin/mypy

# The browser test drives Debian's chromium (and draws the Chinese interface with a CJK font); both are installed
# here, as CI runs `make test` on a bare machine.
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed (not root?): the browser test will skip"
	fc-list :lang=zh | grep -q . || (apt-get update -qq && apt-get install -y -qq fonts-wqy-microhei >/dev/null) \
		|| echo "no Chinese font could be installed: the Chinese screenshot will show boxes"

# The speech tests synthesise speech with Debian's espeak-ng (tests/test_speech.py); installed here like chromium.
speech-tools:
	command -v espeak-ng >/dev/null || (apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null) \
		|| echo "espeak-ng could not be installed (not root?): the speech tests that need spoken words will skip"

test: venv lint typecheck browser speech-tools
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q

# The container image (not part of `test`: it downloads GBs). FLAVOUR=cpu for CPU-only torch wheels.
FLAVOUR ?= gpu
IMAGE ?= seekframe:latest
image: venv
	$(PY) -m deploy.image build --tag $(IMAGE) --flavour $(FLAVOUR)

# Builds, ingests the samples and serves the app from the image, asks a question through the app in a browser.
image-test: venv browser
	$(PY) -m deploy.image test --tag $(IMAGE) --flavour $(FLAVOUR)

# requirements.lock: the exact versions the image installs (pip constraints), resolved from requirements.txt.
lock: venv
	$(PY) -m deploy.lock

clean:
	rm -rf $(VENV) .cache data/samples

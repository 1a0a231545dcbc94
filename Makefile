# Set-up on a fresh machine:  `make demo` (convert the bundled sample) and `make test` (the tests).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_OUT ?= demo-output

.PHONY: demo test test-fiftyone lint system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q -e . 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import boxmask, torch, cv2, pycocotools"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import pytest"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/boxmask weights fetch u2net
	$(BIN)/boxmask convert --pipeline pipelines/ilsvrc_loc_to_pixel_imagenet.toml \
		--input data/samples/ilsvrc_loc --format pixel-imagenet --format coco --output $(DEMO_OUT)
	$(BIN)/boxmask --quiet sample $(DEMO_OUT) --n 40 --output $(DEMO_OUT)/review
	@echo "masks:  $(DEMO_OUT)/pixel-imagenet/<wnid>/<image>.png, $(DEMO_OUT)/coco/instances.json"
	@echo "review: open $(DEMO_OUT)/review/index.html in a browser"

# The system packages first (installed only when missing and when root; else their tests skip).
test: $(VENV)/.installed-test
	@scripts/install-system-deps.sh
	$(BIN)/boxmask weights fetch u2netp
	$(BIN)/python -m pytest

# FiftyOne's own importers on real outputs, in a venv of their own: FiftyOne requires OpenCV < 5,
# which must not replace the OpenCV the rest of the suite runs with.
FO_VENV ?= .venv-fiftyone
test-fiftyone:
	test -x $(FO_VENV)/bin/python || $(PYTHON) -m venv $(FO_VENV)
	$(FO_VENV)/bin/pip install -q -e '.[test,fiftyone]' 2>&1 | grep -v "is ignored" || true
	BOXMASK_REQUIRE_FIFTYONE=1 $(FO_VENV)/bin/python -m pytest -q -p no:cacheprovider \
		tests/writers/test_fiftyone.py tests/test_readme_loaders.py

lint: $(VENV)/.installed-test
	$(BIN)/ruff check boxmask tests benchmarks
	$(BIN)/mypy

# Slurm (slurm-wlm, munge) and Chromium for the cluster and gallery tests; needs root and apt.
system-deps:
	scripts/install-system-deps.sh

clean:
	rm -rf $(VENV) $(FO_VENV) $(DEMO_OUT) .pytest_cache

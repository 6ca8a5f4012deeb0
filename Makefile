# wbc-deploy: `make demo` runs the main job end to end, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/wbc-deploy
DEMO ?= demo-out

.PHONY: setup browser test demo clean pbc-model

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[train,dev]'
	touch $@

# Headless Chromium from the system package manager for the browser tests (best effort: they skip without it).
browser:
	-@bash .ci/install_chromium.sh

test: setup browser
	$(PY) -m ruff check --quiet wbc_deploy tests benchmarks
	$(PY) -m pytest -q

# The whole job on synthetic data: cells -> train -> evaluate -> export (verified ONNX) -> Grad-CAM ->
# synthetic whole-slide image -> count with the ONNX model -> differential next to the truth; then a slide of
# real smear photographs counted with the bundled real-cell model, next to the annotated truth.
demo: setup
	rm -rf $(DEMO)
	$(CLI) synth cells $(DEMO)/cells --per-class 120 --size 64 --seed 0 --quiet
	$(CLI) synth cells $(DEMO)/test-cells --per-class 40 --size 64 --seed 123 --quiet
	$(CLI) train $(DEMO)/cells --out $(DEMO)/run --preset tiny --quiet
	$(CLI) evaluate $(DEMO)/run $(DEMO)/test-cells --out $(DEMO)/test-metrics.json --quiet
	$(CLI) export $(DEMO)/run --out $(DEMO)/export --verify --int8 --calib $(DEMO)/cells --quiet
	$(CLI) explain $(DEMO)/run $(DEMO)/test-cells/monocyte/monocyte_00000.png $(DEMO)/test-cells/neutrophil/neutrophil_00000.png --out $(DEMO)/explain --quiet
	$(CLI) synth slide $(DEMO)/slide.svs --width 6144 --height 6144 --cells 300 --seed 0 --quiet
	$(CLI) count $(DEMO)/slide.svs --model $(DEMO)/export/model.onnx --out $(DEMO)/count --truth --geojson --gallery --review
	@echo
	@echo "Real pixels: 24 BCCD smear photographs (MIT) tiled into a slide, counted with the bundled model (no --model):"
	$(CLI) demo-slide $(DEMO)/bccd-demo.svs
	$(CLI) count $(DEMO)/bccd-demo.svs --out $(DEMO)/count-real --truth --gallery
	@echo
	@echo "Demo outputs in $(DEMO)/:"
	@echo "  run/                      checkpoint, card.json, history.csv, curves.png, confusion.png"
	@echo "  test-metrics.json         metrics on an independent synthetic test set (+ confusion.png)"
	@echo "  export/model.onnx         verified ONNX (and model.int8.onnx)"
	@echo "  explain/*.overlay.png     Grad-CAM overlays"
	@echo "  count/slide.cells.csv     one row per WBC; count/summary.csv the differential"
	@echo "  count/slide.report.html   slide report; count/slide.gallery.<class>.png per-class galleries"
	@echo "  count/slide.review.html   review page: reclassify cells, export corrections for 'wbc-deploy recount'"
	@echo "  count-real/               the real-pixel demo slide counted with the bundled default model"

# Retrain the bundled real-cell model from ../shared/data/pbc (seed 0; about 2 h on 2 cores), measure it on PBC and
# three other scanners, write benchmarks/results/pbc.{json,md} and install it into wbc_deploy/zoo/.
pbc-model: setup
	$(PY) benchmarks/train_pbc.py --install

clean:
	rm -rf $(DEMO) .pytest_cache

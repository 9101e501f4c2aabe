# Set-up and entry points. Everything runs inside a git-ignored .venv built from a
# Python that nnabla 1.39 supports (3.8-3.10), found by scripts/find_python.sh, with the exact versions
# of requirements.lock (requirements.txt and requirements-dev.txt hold the ranges; `make lock` refreshes it).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench lock clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements.lock scripts/find_python.sh
	@test -x $(PY) || { p=$$(scripts/find_python.sh) || exit 1; echo "creating $(VENV) with $$p"; "$$p" -m venv $(VENV) || exit 1; }
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt -c requirements.lock 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import nnabla, numpy, pandas, matplotlib, tqdm, sklearn" 2>/dev/null && $(PY) -m ruff --version >/dev/null 2>&1 || { echo "error: installing requirements-dev.txt (pinned by requirements.lock) into $(VENV) failed; see pip's output above"; exit 1; }
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

# demo: cnn6 on digits, 4 epochs, 10% flipped labels, the whole output tree in output_demo/ (~8 min here)
demo: $(STAMP)
	$(PY) eval_sgd_influence.py -ds digits -o output_demo -e 4 --label-noise 0.1 --validate 6 -r 0 10 100 --cleanse 100 $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) bench/bench_influence.py

# lock: re-resolve requirements.txt + requirements-dev.txt in fresh venvs of every Python 3.8/3.9/3.10
# found (PATH or pyenv) and rewrite requirements.lock (a few minutes per Python)
lock:
	@p=$$(scripts/find_python.sh) || exit 1; "$$p" scripts/lock.py $(LOCK_ARGS)

clean-venv:
	rm -rf $(VENV)

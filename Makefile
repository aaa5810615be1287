# comostream: `make demo` and `make test` do all set-up on a fresh machine.
# A virtual environment is created in .venv (if missing) and the package installed into it with
# the pinned torch/torchaudio from constraints.txt.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.comostream-installed
# Debian packages: PortAudio for sounddevice; TTS voices for the synthetic singing corpus (and
# festival's voices of other people for its extra singers, training/voices.py);
# Chromium for the browser client's end-to-end test (driven headless over DevTools);
# PulseAudio and its ALSA plugin for the live audio loop test (null sinks, no sound card);
# g++ and Python's headers for the inductor backend (the model step compiled to C++).
FESTIVAL_VOICES := festvox-kdlpc16k festvox-ca-ona-hts festvox-czech-dita festvox-czech-krb \
                   festvox-czech-ph festvox-suopuhe-mv festvox-itapc16k festvox-us-slt-hts \
                   festvox-czech-machac festvox-suopuhe-lj festvox-italp16k
DEBIAN_PACKAGES := libportaudio2 flite festival festvox-kallpc16k $(FESTIVAL_VOICES) espeak-ng chromium \
                   pulseaudio pulseaudio-utils libasound2-plugins g++ python3-dev

.PHONY: demo test lint debian-deps install clean help default-model

help:
	@echo "make demo   - set up, then run the main job on the bundled default"
	@echo "make test   - set up, then lint and run the test suite"
	@echo "make default-model - train the shipped model from scratch (~1 h 15 on 2 cores)"
	@echo "make clean  - remove the virtual environment and outputs"

demo: install
	$(VENV)/bin/comostream demo

test: install lint
	$(PY) -m pytest -q -m "not slow and not cuda"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

install: debian-deps $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "comostream needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing comostream and its dependencies into $(VENV) (torch is large: a few minutes)"
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]' 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	touch $(STAMP)

debian-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else \
	    echo "missing Debian packages:$$missing"; \
	    echo "run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

# The shipped model's recipe: synthetic corpus + real voices (prep real, prep merge), content
# encoder, features, vocoder, teacher, distillation, the vocoder fine-tuned on the model's mels,
# export, evaluation, one stage at a time on every core; logs in out/default-model/recipe.log.
# Resumable.
default-model: install
	$(VENV)/bin/comostream train recipe out/default-model

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache .ruff_cache

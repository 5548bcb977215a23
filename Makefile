# wdfhil: the two entry points of README.md, and what they need.
#   make demo   installs everything, then runs the main job on its default
#   make test   installs everything, then runs the whole test suite
PYTHON    ?= python3
VENV      ?= .venv
APT_PKGS  := qemu-system-x86 cpio gcc make libc6-dev ca-certificates
STAMP     := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test install system-deps bench clean

demo: install
	$(VENV)/bin/wdfhil demo

test: install
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

install: system-deps $(STAMP)

# Debian packages the host needs: QEMU to run guests, cpio/gcc/make to build images.
system-deps:
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $(STAMP)

bench: install
	for b in bench/*.py; do $(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

# bloom-agent top-level Makefile.
#
# Packaging targets: deb, lint-deb, deb-deps, clean.
# Other targets (test, unit, demo, ...) are added separately; `clean` is a
# double-colon rule, so each part of this file can add its own `clean::`.

# --- Debian package -------------------------------------------------------
DEB_PACKAGE   := bloom-agent
DEB_DIR       := packaging/debian
# Version of the .deb, from the packaging changelog; must match pyproject.toml.
# (Deferred "=" so that other targets do not pay for these shell calls.)
DEB_VERSION    = $(shell dpkg-parsechangelog -l $(DEB_DIR)/changelog -S Version 2>/dev/null)
PY_VERSION     = $(shell sed -n 's/^version *= *"\([^"]*\)".*/\1/p' pyproject.toml | head -n 1)
# Files and directories of the source tree the package is built from.  A list
# rather than "everything but .git": keeps VM images, rootfs tarballs, venvs
# and caches out of the build tree.
# The unit tests run at build time (dh_auto_test) on what the tree holds: the tests, the sample app and
# the reference generator they check; the integration suite is there for the autopkgtest.
DEB_SOURCES   := pyproject.toml agent units conf docs tests/conftest.py tests/machine.py tests/unit \
                 tests/integration tests/data bench/analysis examples/sampleapp examples/grafana \
                 scripts/config_reference.py \
                 $(wildcard README.md LICENSE setup.cfg MANIFEST.in)
DEB_BUILD_ROOT:= build/deb
DEB_SRC_DIR    = $(DEB_BUILD_ROOT)/$(DEB_PACKAGE)-$(DEB_VERSION)
DIST_DIR      := dist
DEB_FILE       = $(DIST_DIR)/$(DEB_PACKAGE)_$(DEB_VERSION)_all.deb
# Debian's own tools and Python only (no pyenv/venv shims in the build).
DEB_PATH      := /usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
DEB_BUILD_CMD := dpkg-buildpackage -us -uc -b
LINTIAN       := lintian
# Every tag shown, down to pedantic; any one that is not overridden (with its reason) fails the build.
LINTIAN_FLAGS := --display-info --pedantic
# Packages needed to build and check the .deb on a fresh Debian 12 host.
DEB_TOOLS     := build-essential dpkg-dev debhelper dh-python \
                 pybuild-plugin-pyproject python3-all python3-setuptools lintian

.PHONY: deb lint-deb deb-deps clean

deb:
	@test -n "$(DEB_VERSION)" || { echo "cannot read version from $(DEB_DIR)/changelog (dpkg-dev installed?)" >&2; exit 1; }
	@test "$(DEB_VERSION)" = "$(PY_VERSION)" || { echo "version mismatch: $(DEB_DIR)/changelog has $(DEB_VERSION), pyproject.toml has $(PY_VERSION)" >&2; exit 1; }
	rm -rf $(DEB_BUILD_ROOT)
	mkdir -p $(DEB_SRC_DIR) $(DIST_DIR)
	tar -cf - --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' \
		$(DEB_SOURCES) | tar -xf - -C $(DEB_SRC_DIR)
	cp -a $(DEB_DIR) $(DEB_SRC_DIR)/debian
	cd $(DEB_SRC_DIR) && env PATH=$(DEB_PATH) $(DEB_BUILD_CMD)
	rm -f $(DEB_FILE)
	mv $(DEB_BUILD_ROOT)/$(DEB_PACKAGE)_$(DEB_VERSION)_all.deb $(DEB_FILE)
	@echo "built $(DEB_FILE)"

lint-deb:
	@test -f $(DEB_FILE) || { echo "$(DEB_FILE) not found; run 'make deb' first" >&2; exit 1; }
	@out=$$(env PATH=$(DEB_PATH) $(LINTIAN) $(LINTIAN_FLAGS) $(DEB_FILE) 2>&1) || { echo "$$out"; exit 1; }; \
	echo "$$out"; if echo "$$out" | grep -qE '^[EWIPX]: '; then echo "lintian: tags above" >&2; exit 1; fi

deb-deps:
	apt-get install -y --no-install-recommends $(DEB_TOOLS)

clean::
	rm -rf $(DEB_BUILD_ROOT)
	rm -f $(DIST_DIR)/$(DEB_PACKAGE)_*.deb
	for d in $(DIST_DIR) build; do if [ -d $$d ]; then rmdir --ignore-fail-on-non-empty $$d; fi; done

# --- Tests and demo --------------------------------------------------------
# Debian's interpreter: the one the .deb and the python3-* packages use.
PYTHON        := /usr/bin/python3
PYTEST        := env PATH=$(DEB_PATH) $(PYTHON) -m pytest
PYTEST_ARGS   ?=
# Everything the targets below need on a fresh Debian 12 host.
DEPS          := $(DEB_TOOLS) python3-pytest python3-testinfra python3-paramiko \
                 python3-dbus-fast python3-sdnotify python3-systemd python3-psutil python3-click python3-jinja2 python3-zstandard \
                 python3-prometheus-client python3-hypothesis \
                 mmdebstrap systemd-container openssh-client wrk curl openssl ca-certificates ansible-core \
                 python3-venv python3-pip git dbus-daemon

.PHONY: deps test unit integration demo docs

# apt-get update only when something is missing, so a ready host pays nothing.
deps:
	@missing=$$(for p in $(DEPS); do dpkg-query -W -f '$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# What CI runs (.ci/run): the fast layers first, the VM last.
test: unit integration vagrant-test

# pytest's exit code 5 means "no tests collected": a filter (PYTEST_ARGS=-k ...) that matches
# nothing in one suite is not a failure of the run.
unit: deps
	$(PYTEST) tests/unit -q $(PYTEST_ARGS) || [ $$? -eq 5 ]

integration: deps deb lint-deb
	$(PYTEST) tests/integration -v $(PYTEST_ARGS) || [ $$? -eq 5 ]

demo: deps deb
	$(PYTHON) scripts/demo.py --deb $(DEB_FILE)

# The configuration reference's tables, from the settings' declarations (a unit test checks them).
docs:
	$(PYTHON) scripts/config_reference.py

# Integration tests in a whole VM (the last part of `make test`; see docs/testing.md).
include vagrant/vagrant.mk

# RPM package (rpm/mullvad-allow-k8s.spec). Works with Debian's rpmbuild too.
#   make rpm                 build build/rpm/RPMS/noarch/*.rpm from the tracked files
#                            of the working tree (HEAD plus uncommitted edits)
#   make rpm RPM_REF=HEAD    build exactly a commit
#   make rpm RPM_RELEASE=2   bump the Release (the upgrade tests do this)
#   make rpm-lint            rpmlint the spec and the built packages, with rpmlint's
#                            default, Fedora and openSUSE configurations
#   make rpm-test            build, lint and install/upgrade/erase tests (root)
#   make rpm-bench           start-up cost of the launcher without bytecode (figures only)
RPM_SPEC := rpm/mullvad-allow-k8s.spec
RPM_TOPDIR ?= $(CURDIR)/build/rpm
RPM_RELEASE ?= 1
RPM_REF ?=
RPM_VERSION = $(shell sed -n 's/^Version: *//p' $(RPM_SPEC))
RPM_TARBALL = $(RPM_TOPDIR)/SOURCES/mullvad-allow-k8s-$(RPM_VERSION).tar.gz
# Where rpm's own database does not list the build dependencies (Debian), skip the check.
RPMBUILD_FLAGS ?= $(shell rpm -q --quiet rpm 2>/dev/null || echo --nodeps)
# Reproducible: the same sources give a byte-identical package (build time from the
# %changelog, file times clamped to it, no host name), so `make repo` run twice finds
# the rpm already published instead of a different one under the same name.
RPM_REPRODUCIBLE := --define 'source_date_epoch_from_changelog 1' \
    --define 'use_source_date_epoch_as_buildtime 1' \
    --define 'clamp_mtime_to_source_date_epoch 1' --define '_buildhost reproducible'

.PHONY: rpm rpm-tarball rpm-lint rpm-lint-configs rpm-test rpm-bench rpm-clean
rpm-tarball:
	mkdir -p $(RPM_TOPDIR)/SOURCES
	# flock: parallel test workers would otherwise race for git's index.lock.
	ref='$(RPM_REF)'; [ -n "$$ref" ] || ref=$$(flock /tmp/mullvad-allow-k8s-git.lock git stash create); \
	git archive --format=tar.gz --prefix=mullvad-allow-k8s-$(RPM_VERSION)/ \
	    -o $(RPM_TARBALL) $${ref:-HEAD}

rpm: rpm-tarball
	rpmbuild -bb $(RPMBUILD_FLAGS) $(RPM_REPRODUCIBLE) --define '_topdir $(RPM_TOPDIR)' \
	    --define 'rpm_release $(RPM_RELEASE)' $(RPM_SPEC)

# rpmlint's Fedora and openSUSE configurations ship only in its source distribution
# (Debian's rpmlint package has neither): fetched once from PyPI with pip, for the
# rpmlint version installed, into build/ (never committed). Prints the directory.
RPMLINT_CONFIGS ?= $(CURDIR)/build/rpmlint-configs
rpm-lint-configs:
	@v=$$(rpmlint --version) && d='$(RPMLINT_CONFIGS)'/rpmlint-$$v && \
	if [ ! -f "$$d/.complete" ]; then \
	    rm -rf "$$d.tmp" && mkdir -p "$$d.tmp" && \
	    $(PYTHON) -m pip download -q --no-deps --no-binary :all: -d "$$d.tmp" "rpmlint==$$v" && \
	    tar -xzf "$$d.tmp/rpmlint-$$v.tar.gz" -C "$$d.tmp" --strip-components=2 \
	        "rpmlint-$$v/configs/Fedora" "rpmlint-$$v/configs/openSUSE" && \
	    rm "$$d.tmp/rpmlint-$$v.tar.gz" && touch "$$d.tmp/.complete" && \
	    rm -rf "$$d" && mv "$$d.tmp" "$$d"; \
	fi && echo "$$d"

# One rpmlint run per configuration: the default, Fedora's, openSUSE's, each with
# rpm/rpmlintrc.toml on top (rpmlint merges every *.toml of a -c directory).
RPM_BUILT = $(RPM_TOPDIR)/RPMS/noarch/mullvad-allow-k8s-$(RPM_VERSION)-$(RPM_RELEASE)*.noarch.rpm
rpm-lint: rpm
	rpmlint -c rpm/rpmlintrc.toml $(RPM_SPEC) $(RPM_BUILT)
	@d=$$($(MAKE) -s --no-print-directory rpm-lint-configs) && \
	for distro in Fedora openSUSE; do \
	    conf=$$(mktemp -d) && cp "$$d/$$distro"/*.toml rpm/rpmlintrc.toml "$$conf/" && \
	    echo "rpmlint ($$distro configuration)" && \
	    rpmlint -c "$$conf" $(RPM_SPEC) $(RPM_BUILT); rc=$$?; rm -rf "$$conf"; \
	    [ $$rc = 0 ] || exit $$rc; \
	done

rpm-test: venv
	$(BIN)/python -m pytest tests/rpm $(PYTEST_ARGS)

rpm-bench:
	$(PYTHON) bench/rpm_launcher_bench.py

rpm-clean:
	rm -rf $(RPM_TOPDIR)

# RPM package (rpm/mullvad-allow-k8s.spec). Works with Debian's rpmbuild too.
#   make rpm                 build build/rpm/RPMS/noarch/*.rpm from the tracked files
#                            of the working tree (HEAD plus uncommitted edits)
#   make rpm RPM_REF=HEAD    build exactly a commit
#   make rpm RPM_RELEASE=2   bump the Release (the upgrade tests do this)
#   make rpm-lint            rpmlint the spec and the built packages
#   make rpm-test            build, lint and install/upgrade/erase tests (root)
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

.PHONY: rpm rpm-tarball rpm-lint rpm-test rpm-clean
rpm-tarball:
	mkdir -p $(RPM_TOPDIR)/SOURCES
	# flock: parallel test workers would otherwise race for git's index.lock.
	ref='$(RPM_REF)'; [ -n "$$ref" ] || ref=$$(flock /tmp/mullvad-allow-k8s-git.lock git stash create); \
	git archive --format=tar.gz --prefix=mullvad-allow-k8s-$(RPM_VERSION)/ \
	    -o $(RPM_TARBALL) $${ref:-HEAD}

rpm: rpm-tarball
	rpmbuild -bb $(RPMBUILD_FLAGS) $(RPM_REPRODUCIBLE) --define '_topdir $(RPM_TOPDIR)' \
	    --define 'rpm_release $(RPM_RELEASE)' $(RPM_SPEC)

rpm-lint: rpm
	rpmlint -c rpm/rpmlintrc.toml $(RPM_SPEC) $(RPM_TOPDIR)/RPMS/noarch/mullvad-allow-k8s-$(RPM_VERSION)-$(RPM_RELEASE)*.noarch.rpm

rpm-test: venv
	$(BIN)/python -m pytest tests/rpm $(PYTEST_ARGS)

rpm-clean:
	rm -rf $(RPM_TOPDIR)

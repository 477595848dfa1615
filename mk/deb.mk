# Debian package (debian/): `make deb` builds the source and binary package from a
# clean copy of the tree into $(DEB_DIR) and runs lintian on them; `make deb-test`
# runs tests/deb (root: installs in a Debian bookworm root under a private network
# namespace). Build dependencies: .ci/apt/deb.txt.
#
#   DEB_DIR=build/deb        where the copy, the .deb and lintian.txt go
#   DEB_VERSION=0.1.0+t1     build with an extra changelog entry at that version
#                            (the copy only; tests/deb uses it for upgrades)
DEB_DIR ?= build/deb
DEB_VERSION ?=
DEB_LINTIAN ?= yes

.PHONY: deb deb-test

deb:
	@set -e; \
	out="$(abspath $(DEB_DIR))"; \
	rm -rf "$$out"; mkdir -p "$$out/tree"; \
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
		git ls-files -z --cached --others --exclude-standard \
		| tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$$out/tree"; \
	else \
		tar --exclude=./.venv --exclude=./build --exclude=./.git -cf - . | tar -xf - -C "$$out/tree"; \
	fi; \
	cd "$$out/tree"; \
	if [ -n "$(DEB_VERSION)" ]; then \
		{ printf 'mullvad-allow-k8s (%s) unstable; urgency=medium\n\n  * Rebuild at %s.\n\n -- %s  %s\n\n' \
			"$(DEB_VERSION)" "$(DEB_VERSION)" "$$(dpkg-parsechangelog -S Maintainer)" "$$(date -R)"; \
		  cat debian/changelog; } > debian/changelog.new; \
		mv debian/changelog.new debian/changelog; \
	fi; \
	start=$$(date +%s%N); \
	env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage --no-sign --build=source,binary >"$$out/build.log" 2>&1 \
		|| { tail -n 40 "$$out/build.log"; exit 1; }; \
	end=$$(date +%s%N); \
	cd "$$out"; \
	echo "built $$(ls *.deb) in $$(( (end - start) / 1000000 )) ms"; \
	if [ "$(DEB_LINTIAN)" = yes ]; then \
		rc=0; lintian --display-info --fail-on error,warning *.changes >lintian.txt 2>&1 || rc=$$?; \
		cat lintian.txt; echo "lintian: exit $$rc, $$(wc -l < lintian.txt) tags (fails on errors and warnings)"; \
		exit $$rc; \
	fi

deb-test: venv
	$(BIN)/python -m pytest tests/deb $(PYTEST_ARGS)

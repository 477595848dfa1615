# Signed apt and dnf repositories (repo/publish; layout in repo/apt-ftparchive.conf).
#   make repo            build the .deb and the .rpm (make deb, make rpm) and publish
#                        them into $(REPO_DIR): apt/, rpm/, the public key, a ready
#                        .sources (deb822, key inline in Signed-By) and .repo file
#   make repo-publish    publish REPO_DEBS and REPO_RPMS only (no builds)
#   make repo-test       tests/repo: install/upgrade by name, tampering refused (root)
#   make repo-clean      delete $(REPO_DIR) and the throwaway key
# Publishing adds to what $(REPO_DIR) has: older versions stay; a published file is
# never replaced by other content (bump debian/changelog or RPM_RELEASE instead).
#
#   REPO_DIR=build/repo          the folder to serve as static files
#   REPO_URL=https://host/path   where it will be served (default file://$(REPO_DIR))
#   REPO_GNUPGHOME=$HOME/.gnupg  keyring with the signing key; unset: a throwaway
#                                key in $(REPO_TEST_KEY) (for trying out only)
#   REPO_KEY=FINGERPRINT         the signing key, when the keyring has several
# Tools: .ci/apt/repo.txt.
REPO_DIR ?= build/repo
REPO_URL ?=
REPO_GNUPGHOME ?=
REPO_KEY ?=
REPO_DEBS ?=
REPO_RPMS ?=
REPO_TEST_KEY ?= build/repo-test-key

.PHONY: repo repo-publish repo-test repo-clean

repo:
	@scripts/install-deps.sh .ci/apt/repo.txt .ci/apt/deb.txt .ci/apt/rpm.txt
	$(MAKE) --no-print-directory -j2 deb rpm
	$(MAKE) --no-print-directory repo-publish \
		REPO_DEBS="$$(ls $(DEB_DIR)/*_all.deb)" \
		REPO_RPMS="$$(ls $(RPM_TOPDIR)/RPMS/noarch/mullvad-allow-k8s-$(RPM_VERSION)-$(RPM_RELEASE)*.noarch.rpm)"

repo-publish:
	@scripts/install-deps.sh .ci/apt/repo.txt
	@set -e; \
	home='$(REPO_GNUPGHOME)'; \
	if [ -z "$$home" ]; then \
		home='$(REPO_TEST_KEY)'; \
		echo "make repo: no REPO_GNUPGHOME given: signing with a throwaway key in $$home (to try the repositories out; publish with your own key)" >&2; \
		repo/test-key "$$home" >/dev/null; \
	fi; \
	case $$home in "~"/*) home="$$HOME/$${home#"~/"}" ;; esac; \
	export GNUPGHOME="$$(cd "$$home" && pwd)"; \
	rc=0; repo/publish \
		$(foreach f,$(REPO_DEBS),--deb $(f)) $(foreach f,$(REPO_RPMS),--rpm $(f)) \
		$(if $(REPO_URL),--url '$(REPO_URL)') $(if $(REPO_KEY),--key '$(REPO_KEY)') \
		'$(REPO_DIR)' || rc=$$?; \
	if [ -z '$(REPO_GNUPGHOME)' ]; then gpgconf --kill gpg-agent; fi; \
	exit $$rc

repo-test: venv
	@scripts/install-deps.sh .ci/apt/repo.txt .ci/apt/deb.txt .ci/apt/rpm.txt
	$(BIN)/python -m pytest tests/repo $(PYTEST_ARGS)

repo-clean:
	rm -rf $(REPO_DIR) $(REPO_TEST_KEY)

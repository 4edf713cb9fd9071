# Integration tests in a whole VM: Vagrant with vagrant-libvirt (see docs/testing.md).
# Included by the top-level Makefile, which provides `deps` and `deb`.
#
#   make vagrant-test    install vagrant/libvirt/qemu if missing, boot the VM, install the
#                        .deb there, run the integration tests in it, destroy it (always)
#   make vagrant-clean   remove whatever a killed vagrant-test left behind (VM, network,
#                        storage pool, the daemons it started, libvirt's iptables chains)
#   make vagrant-box     build the local test box now (cached; vagrant-test builds it when needed)
#
# BLOOM_VAGRANT_TESTS="all" (or a pytest -k expression) chooses the tests; PYTEST_ARGS is
# passed on. Other settings: the header of vagrant/test.sh.

VAGRANT_TEST := vagrant/test.sh

.PHONY: vagrant-test vagrant-clean vagrant-box

vagrant-test: deps deb
	$(VAGRANT_TEST) run

vagrant-clean:
	$(VAGRANT_TEST) clean

vagrant-box:
	BLOOM_VAGRANT_LOCAL_BOX=1 $(VAGRANT_TEST) box

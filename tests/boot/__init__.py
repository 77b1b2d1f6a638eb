"""Network-boot tests: real firmware in QEMU boots the Debian installer (issue 4).

    sudo python3 -m pytest tests/boot            # about 8 minutes under TCG
    sudo scripts/bench_boot.sh --runs 5          # pybootd against dnsmasq
    sudo scripts/bench_boot.sh --only http       # HTTP chains against dnsmasq + http.server

``PYBOOTD_BOOT_ACCEL=kvm|tcg`` skips the KVM probe; ``PYBOOTD_BOOT_KEEP=1``
keeps every work folder (configs, server logs, serial consoles, pcaps) under
``/tmp/pybootd-boot-*``. Modules: ``vm`` (QEMU), ``sniff`` (packet watcher on
the VMs' taps: DHCP, TFTP, HTTP), ``servers`` (pybootd, dnsmasq, web server),
``fixtures`` (boot files), ``samples`` (etc/*.ini made runnable), ``bootlab``
(the boot network and the times).
"""

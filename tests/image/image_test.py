#!/usr/bin/env python3
"""`make image-test`: boots the load balancer image under QEMU and checks it from the host.

1. mmdebstrap builds a Debian 12 root filesystem from Debian's packages: the parts the Debian
   cloud image gives the Packer build (kernel, systemd, cloud-init, python3, ifupdown), plus
   qemu-guest-agent so that the host can ask the guest questions without a network.
2. The *same* packer/scripts/provision.sh and cleanup.sh that Packer runs are run inside it,
   from the same stage directory (`make stage-amd64`). The only test-only file is the API
   stand-in binary, /usr/local/bin/vpsie-api-sim; its unit and spec come from the user data.
3. The tree is packed into an ext4 filesystem and a qcow2, and booted with qemu-system-x86_64
   (software emulation; IMAGE_TEST_ACCEL=kvm for KVM), user-mode networking with
   `restrict=on` (the guest reaches nothing outside) and host port forwards on 127.0.0.1 only.
4. cloud-init user data (a NoCloud seed) configures the agent to follow the stand-in on the
   guest's loopback. From the host the test then checks: both units active, Envoy LIVE, the
   agent applied the stand-in's spec (same hash), a request through the forwarded listener port
   reaches a backend, Prometheus can scrape through Envoy, kernel tuning is in force, and
   restarting the agent unit leaves the supervisor and Envoy alone.

Run as root (mmdebstrap's root mode, chroot, mkfs). Exits non-zero on the first failed check.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# What differs between the architectures, and nothing else: the same test, the same checks.
ARCHES = {
    "amd64": {
        "kernel": "linux-image-cloud-amd64",
        "qemu": "qemu-system-x86_64",
        "machine": [],
        "console": "ttyS0",
        "cpu": "max",
        "host_packages": "qemu-system-x86",
        # How much slower the guest runs than an amd64 guest under TCG: every wait is scaled
        # by it, so that it stays a bound (a guest slower than that fails).
        "slow": 1,
    },
    "arm64": {
        "kernel": "linux-image-cloud-arm64",
        "qemu": "qemu-system-aarch64",
        "machine": ["-M", "virt"],
        "console": "ttyAMA0",
        # Pointer authentication with QEMU's own cheap algorithm: the architected one costs
        # TCG several times the time of every function return.
        "cpu": "max,pauth-impdef=on",
        "host_packages": "qemu-system-arm qemu-user-static binfmt-support",
        "slow": 4,
    },
}
ARCH = os.environ.get("IMAGE_TEST_ARCH", "amd64")
if ARCH not in ARCHES:
    sys.exit(f"IMAGE_TEST_ARCH={ARCH}: amd64 or arm64")
A = ARCHES[ARCH]
STAGE = os.path.join(ROOT, "output", f"stage-{ARCH}")
WORK = os.path.join(ROOT, "output", f"image-test-{ARCH}" if ARCH != "amd64" else "image-test")
LB_ID = "image-test-lb"
API_PORT = 18090
# Debian's packages that the Debian 12 cloud image already has (and Packer's build relies on),
# plus the guest agent the test talks to. Nothing is installed from anywhere else.
PACKAGES = [
    "systemd", "systemd-sysv", "udev", "dbus", A["kernel"], "initramfs-tools",
    "python3", "cloud-init", "ifupdown", "isc-dhcp-client", "logrotate", "procps", "iproute2",
    "curl", "locales", "openssh-server", "qemu-guest-agent",
    # What Packer's build adds by name from Debian (packer/vpsie-lb.pkr.hcl).
    "keepalived",
]
REQUIRED_TOOLS = ["mmdebstrap", A["qemu"], "qemu-img", "mkfs.ext4", "cloud-localds"]

T0 = time.monotonic()


def log(msg):
    print(f"[image-test {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


# Run when a check fails, to show the guest's side (journal, unit states).
DIAGNOSE = []


def fail(msg):
    print(f"[image-test] FAILED: {msg}", file=sys.stderr, flush=True)
    while DIAGNOSE:
        try:
            DIAGNOSE.pop()()
        except Exception as e:  # noqa: BLE001 - diagnostics must not hide the failure
            print(f"[image-test] (diagnostics failed: {e!r})", file=sys.stderr)
    sys.exit(1)


def run(cmd, **kw):
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


def debian_sources():
    """The host's apt sources for Debian, handed to mmdebstrap as they are: no mirror is
    written here, the test uses whatever this machine's apt uses."""
    override = os.environ.get("IMAGE_TEST_APT_SOURCES")
    if override:
        return override
    for path in ["/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"]:
        if os.path.exists(path) and "bookworm" in open(path).read():
            return path
    fail("no apt sources for Debian bookworm on this machine; set IMAGE_TEST_APT_SOURCES")


def preflight():
    if os.geteuid() != 0:
        fail("run as root: mmdebstrap (root mode), chroot and mkfs need it")
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        fail(f"missing {' '.join(missing)}: apt-get install mmdebstrap {A['host_packages']} "
             "qemu-utils e2fsprogs cloud-image-utils")
    for f in ["vpsie-lb-agent", "vpsie-api-sim", "provision.sh", "cleanup.sh"]:
        if not os.path.exists(os.path.join(STAGE, f)):
            fail(f"{STAGE}/{f} is missing: run `scripts/stage-image.sh {ARCH} --with-sim` "
                 f"(make {'image-test' if ARCH == 'amd64' else 'image-test-' + ARCH} does)")
    if foreign():
        binfmt_ready()


def foreign():
    """Whether the guest's architecture is not this machine's (its chroot then runs under
    qemu-user, through binfmt_misc)."""
    host = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
    return host.stdout.strip() != ARCH


def binfmt_ready():
    """qemu-user registered for the guest's binaries, so that mmdebstrap's chroot and the
    provisioning scripts run as they would on the architecture itself."""
    qemu_arch = {"arm64": "aarch64", "amd64": "x86_64"}[ARCH]
    entry = f"/proc/sys/fs/binfmt_misc/qemu-{qemu_arch}"
    if not os.path.exists("/proc/sys/fs/binfmt_misc/register"):
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"],
                       check=False)
    if not os.path.exists(entry) and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", f"qemu-{qemu_arch}"], check=False)
    if not os.path.exists(entry):
        fail(f"{entry} is not registered: apt-get install qemu-user-static binfmt-support, "
             "and mount binfmt_misc on /proc/sys/fs/binfmt_misc")


def build_rootfs(rootfs):
    stage_in = "/tmp/vpsie-lb-stage"
    hooks = [
        # What the Debian cloud image has and a bare debootstrap does not.
        'echo vpsie-lb > "$1/etc/hostname"',
        'printf "LABEL=vpsie-root / ext4 defaults 0 1\\n" > "$1/etc/fstab"',
        'sed -i "s/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/" "$1/etc/locale.gen"',
        'chroot "$1" locale-gen',
        # The image's provisioning, exactly as Packer runs it.
        f'mkdir -p "$1{stage_in}" && cp -a {STAGE}/. "$1{stage_in}/"',
        f'chroot "$1" {stage_in}/provision.sh {stage_in}',
        # Twice: an upgrade re-runs it on a provisioned system, so it must be idempotent.
        f'chroot "$1" {stage_in}/provision.sh {stage_in}',
        # Test only: the API stand-in, run in the guest on its loopback (see the user data).
        f'install -m 0755 {STAGE}/vpsie-api-sim "$1/usr/local/bin/vpsie-api-sim"',
        f'chroot "$1" {stage_in}/cleanup.sh {stage_in}',
    ]
    cmd = ["mmdebstrap", "--mode=root", "--variant=minbase", f"--architectures={ARCH}",
           "--include=" + ",".join(PACKAGES)]
    for h in hooks:
        cmd += ["--customize-hook", h]
    cmd += ["bookworm", rootfs, debian_sources()]
    run(cmd)
    # cleanup.sh must leave no identity behind: every VM gets its own at first boot.
    if open(os.path.join(rootfs, "etc/machine-id")).read() != "":
        fail("/etc/machine-id is not empty in the image")
    keys = [f for f in os.listdir(os.path.join(rootfs, "etc/ssh")) if f.startswith("ssh_host_")] \
        if os.path.isdir(os.path.join(rootfs, "etc/ssh")) else []
    if keys:
        fail(f"SSH host keys left in the image: {keys}")
    log("rootfs provisioned; image has an empty machine-id and no SSH host keys")


def pack(rootfs, work):
    boot = os.path.join(rootfs, "boot")
    kernel = sorted(f for f in os.listdir(boot) if f.startswith("vmlinuz-"))[-1]
    initrd = sorted(f for f in os.listdir(boot) if f.startswith("initrd.img-"))[-1]
    shutil.copy(os.path.join(boot, kernel), os.path.join(work, "vmlinuz"))
    shutil.copy(os.path.join(boot, initrd), os.path.join(work, "initrd.img"))
    raw = os.path.join(work, "disk.raw")
    run(["mkfs.ext4", "-q", "-F", "-L", "vpsie-root", "-d", rootfs, raw, "3G"])
    qcow = os.path.join(work, "disk.qcow2")
    run(["qemu-img", "convert", "-O", "qcow2", raw, qcow])
    os.unlink(raw)
    log(f"packed: {qcow} ({os.path.getsize(qcow) // (1 << 20)} MiB), kernel {kernel}")
    return qcow


def spec(backends=("web1", "web2")):
    return {
        "identifier": LB_ID,
        "lbName": "image-test",
        "rules": [{
            "ruleId": "web",
            "scheme": "http",
            "frontPort": 80,
            "backPort": 8101,
            "healthCheckPath": "/",
            "checkInterval": 1000,
            "backends": [
                {"identifier": name, "ip": "127.0.0.1", "port": 8100 + int(name[3:]),
                 "weight": 100}
                for name in backends
            ],
        }],
    }


def test_settings():
    """The shipped agent.yaml with only what pointing at a loopback stand-in needs changed;
    each change must apply, so the test notices when the template moves."""
    text = open(os.path.join(ROOT, "packer", "files", "agent.yaml")).read()
    changes = [
        ("api_url: https://api.vpsie.com", f"api_url: http://127.0.0.1:{API_PORT}"),
        ("poll_interval_s: 30", "poll_interval_s: 2"),
        ("allowed_hosts: [api.vpsie.com]", "allowed_hosts: [127.0.0.1]"),
        # The host's scrapes arrive from QEMU's user-mode gateway.
        ("allowed_cidrs: []", "allowed_cidrs: [10.0.2.2/32]"),
    ]
    for old, new in changes:
        if old not in text:
            fail(f"packer/files/agent.yaml no longer contains {old!r}; update the image test")
        text = text.replace(old, new)
    return text + ("\ndev:\n  allow_loopback_backends: true   # image test: backends on the guest's loopback\n"
                   "  allow_insecure_http: true       # image test: plain http to the loopback stand-in\n")


def user_data(token):
    def file(path, content, owner="root:root", mode="0644"):
        return {"path": path, "owner": owner, "permissions": mode, "content": content}

    sim_unit = f"""[Unit]
Description=image test: VPSie API stand-in on the guest's loopback
[Service]
ExecStart=/usr/local/bin/vpsie-api-sim --listen 127.0.0.1:{API_PORT} --token-file /etc/vpsie-api-sim/token --lb {LB_ID}=/etc/vpsie-api-sim/lb.json --upstream web1=127.0.0.1:8101 --upstream web2=127.0.0.1:8102 --upstream web3=127.0.0.1:8103
"""
    doc = {
        "write_files": [
            # The first-boot settings an operator provides (packer/cloud-init/user-data.example).
            file("/etc/vpsie-lb/agent.env",
                 f"VPSIE_LB_ID={LB_ID}\n",
                 "root:vpsie-lb", "0640"),
            file("/etc/vpsie-lb/api-key", token + "\n", "vpsie-lb:vpsie-lb", "0600"),
            file("/etc/vpsie-lb/agent.yaml", test_settings(), "root:vpsie-lb", "0640"),
            # The stand-in the agent follows, and its two upstreams.
            file("/etc/vpsie-api-sim/token", token + "\n", "root:root", "0600"),
            file("/etc/vpsie-api-sim/lb.json", json.dumps(spec(), indent=2) + "\n"),
            file("/etc/systemd/system/vpsie-api-sim.service", sim_unit),
        ],
        "runcmd": [
            ["systemctl", "daemon-reload"],
            ["systemctl", "start", "--no-block", "vpsie-api-sim.service"],
        ],
    }
    # JSON is YAML: no YAML library needed, and no quoting mistakes.
    return "#cloud-config\n" + json.dumps(doc, indent=2) + "\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GuestAgent:
    """A client of qemu-guest-agent over the virtio-serial socket: commands run in the guest
    without any network between host and guest."""

    def __init__(self, path, vm):
        self.path = path
        self.vm = vm
        self.sock = None
        self.buf = b""

    def connect(self, deadline):
        while time.monotonic() < deadline:
            if self.vm.poll() is not None:
                fail(f"QEMU exited with {self.vm.returncode} (see qemu.log, console.log)")
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(self.path)
                self.sock.settimeout(3)
                self.buf = b""
                sync_id = int.from_bytes(os.urandom(4), "big")
                # Before the guest agent starts, nothing answers; guest-sync tells a fresh
                # answer from a stale one.
                self.sock.sendall(json.dumps(
                    {"execute": "guest-sync", "arguments": {"id": sync_id}}).encode() + b"\n")
                while True:
                    reply = self._read()
                    if reply.get("return") == sync_id:
                        self.sock.settimeout(30)
                        return
            except (OSError, ValueError):
                if self.sock:
                    self.sock.close()
                time.sleep(2)
        fail("the guest agent never answered (the VM did not boot; see console.log)")

    def _read(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("guest agent closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.strip().lstrip(b"\xff")
        return json.loads(line) if line else {}

    def call(self, execute, arguments=None):
        msg = {"execute": execute}
        if arguments is not None:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "error" in reply:
                raise RuntimeError(f"{execute}: {reply['error']}")
            if "return" in reply:
                return reply["return"]

    def sh(self, command, timeout=120, stdin=None):
        """Runs `sh -c command` in the guest; returns (exit code, stdout + stderr)."""
        args = {"path": "/bin/sh", "arg": ["-c", command], "capture-output": True}
        if stdin is not None:
            args["input-data"] = base64.b64encode(stdin.encode()).decode()
        pid = self.call("guest-exec", args)["pid"]
        timeout *= A["slow"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.call("guest-exec-status", {"pid": pid})
            if st.get("exited"):
                out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
                err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
                return st.get("exitcode", -1), out + err
            time.sleep(0.5)
        fail(f"guest command timed out after {timeout}s: {command}")

    def check(self, command, timeout=120, stdin=None):
        code, out = self.sh(command, timeout, stdin)
        if code != 0:
            fail(f"guest command failed ({code}): {command}\n{out}")
        return out


def http_get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode(errors="replace")


def wait_for(what, probe, timeout, interval=2):
    timeout *= A["slow"]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            ok, last = probe()
            if ok:
                return last
        except Exception as e:  # noqa: BLE001 - anything means "not yet"
            last = repr(e)
        time.sleep(interval)
    fail(f"timed out after {timeout}s waiting for {what}; last: {last}")


def boot(work, qcow, seed, ports):
    # Software emulation by default: it works everywhere. Nested KVM on this kind of machine
    # has /dev/kvm but aborts on MSR 0x10a (or hangs); IMAGE_TEST_ACCEL=kvm where KVM works.
    kvm = os.environ.get("IMAGE_TEST_ACCEL", "tcg") == "kvm"
    accel = ["-accel", "kvm", "-cpu", "host"] if kvm else ["-accel", "tcg", "-cpu", A["cpu"]]
    log(f"booting under {'KVM' if kvm else 'software emulation (TCG)'}")
    fwd = ",".join(f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in ports)
    cmd = [A["qemu"], *A["machine"], *accel, "-m", "1536", "-smp", "2", "-nodefaults",
           "-display", "none",
           "-serial", f"file:{os.path.join(work, 'console.log')}",
           "-kernel", os.path.join(work, "vmlinuz"), "-initrd", os.path.join(work, "initrd.img"),
           "-append", f"root=LABEL=vpsie-root rw console={A['console']} panic=-1",
           "-drive", f"file={qcow},if=virtio,format=qcow2",
           "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
           "-netdev", f"user,id=net0,restrict=on,{fwd}",
           "-device", "virtio-net-pci,netdev=net0",
           "-chardev", f"socket,id=qga0,path={os.path.join(work, 'qga.sock')},server=on,wait=off",
           "-device", "virtio-serial",
           "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]
    log("$ " + " ".join(cmd))
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(
        os.path.join(work, "qemu.log"), "w"))


def main():
    preflight()
    if os.path.exists(WORK):
        shutil.rmtree(WORK)
    os.makedirs(WORK)
    rootfs = os.path.join(WORK, "rootfs")
    build_rootfs(rootfs)
    qcow = pack(rootfs, WORK)
    shutil.rmtree(rootfs)

    token = hashlib.sha256(os.urandom(32)).hexdigest()
    with open(os.path.join(WORK, "user-data"), "w") as f:
        f.write(user_data(token))
    with open(os.path.join(WORK, "meta-data"), "w") as f:
        f.write(f"instance-id: image-test-{int(time.time())}\nlocal-hostname: vpsie-lb\n")
    seed = os.path.join(WORK, "seed.img")
    run(["cloud-localds", seed, os.path.join(WORK, "user-data"), os.path.join(WORK, "meta-data")])

    http_port, scrape_port = free_port(), free_port()
    vm = boot(WORK, qcow, seed, [(http_port, 80), (scrape_port, 9100)])
    t_boot = time.monotonic()
    try:
        checks(GuestAgent(os.path.join(WORK, "qga.sock"), vm), http_port, scrape_port, t_boot)
    finally:
        vm.terminate()
        try:
            vm.wait(10)
        except subprocess.TimeoutExpired:
            vm.kill()
        if os.environ.get("IMAGE_TEST_CONSOLE") or sys.exc_info()[0] is not None:
            for name in ["qemu.log", "console.log"]:
                print(f"--- {name} (end) ---")
                print(open(os.path.join(WORK, name), errors="replace").read()[-6000:])
    log(f"PASSED in {time.monotonic() - T0:.0f}s (VM up to all checks: "
        f"{time.monotonic() - t_boot:.0f}s)")


def checks(qga, http_port, scrape_port, t_boot):
    qga.connect(time.monotonic() + 600 * A["slow"])

    def journal():
        code, out = qga.sh("systemctl --no-pager status vpsie-lb-envoy vpsie-lb-agent "
                           "vpsie-api-sim vpsie-lb-keepalived; for u in vpsie-lb-envoy "
                           "vpsie-lb-agent vpsie-api-sim vpsie-lb-keepalived cloud-final; do "
                           "echo \"--- journal of $u\"; journalctl --no-pager "
                           "-b -n 40 -u $u; done; tail -n 40 /var/log/vpsie-lb/envoy.log", 60)
        print("--- guest journal ---\n" + out, file=sys.stderr)
    DIAGNOSE.append(journal)
    log(f"guest agent answers ({time.monotonic() - t_boot:.0f}s after start)")

    out = qga.check("cloud-init status --wait --long", timeout=600)
    log("cloud-init:\n" + out.strip())
    if "status: done" not in out:
        fail("cloud-init did not finish cleanly")

    def units_active():
        # is-active exits 0 when *any* unit is active: read every line.
        _, out = qga.sh("systemctl is-active vpsie-lb-envoy.service vpsie-lb-agent.service")
        return out.split() == ["active", "active"], out.strip()
    wait_for("both units active", units_active, 120)
    log("units:\n" + qga.check(
        "systemctl show -p Id -p ActiveState -p SubState -p MainPID -p User -p NRestarts "
        "vpsie-lb-envoy.service vpsie-lb-agent.service").strip())

    # A request from the host, through the forwarded port, into Envoy's listener on port 80.
    def request():
        status, body = http_get(f"http://127.0.0.1:{http_port}/")
        return status == 200 and ("web1" in body or "web2" in body), f"{status} {body[:80]!r}"
    got = wait_for("a request through the VM to reach a backend", request, 180)
    log(f"GET http://127.0.0.1:{http_port}/ (guest port 80) -> {got}")
    seen = set()
    for _ in range(8):
        _, body = http_get(f"http://127.0.0.1:{http_port}/")
        seen.update(n for n in ("web1", "web2") if n in body)
    if seen != {"web1", "web2"}:
        fail(f"round robin over both backends expected, saw {sorted(seen)}")
    log(f"8 more requests reached {sorted(seen)}")
    # The shipped settings listen on both address families: an IPv6 client (the guest's own
    # ::1, QEMU's user network forwards IPv4 only) is served by the same rule.
    body6 = qga.check("curl -sf -g 'http://[::1]:80/'")
    if "web1" not in body6 and "web2" not in body6:
        fail(f"no backend answered over IPv6: {body6[:80]!r}")
    log("GET http://[::1]:80/ inside the guest -> a backend (both families by default)")

    server_info = json.loads(qga.check("curl -sf --unix-socket /run/vpsie-lb/envoy-admin.sock http://envoy-admin/server_info"))
    if server_info.get("state") != "LIVE":
        fail(f"Envoy is {server_info.get('state')}, not LIVE")
    log(f"Envoy {server_info.get('version', '?').split('/')[1]} state LIVE, "
        f"epoch {server_info.get('command_line_options', {}).get('restart_epoch')}")
    # The guest is the architecture under test, and the Envoy serving is its build.
    machine, page = qga.check("uname -m; getconf PAGESIZE").split()
    envoy_elf = qga.check("od -An -tx1 -j18 -N2 /usr/local/bin/envoy").split()
    want = {"amd64": ("x86_64", ["3e", "00"]), "arm64": ("aarch64", ["b7", "00"])}[ARCH]
    if (machine, envoy_elf) != want:
        fail(f"guest {machine}, Envoy's ELF machine {envoy_elf}: not the {ARCH} image")
    log(f"guest {machine}, page size {page}, Envoy built for it (ELF machine {envoy_elf[0]})")

    # The applied config is the one rendered from the stand-in's spec.
    want = stand_in_hash(qga)
    status = agent_status(qga)
    log("vpsie-lb-agent status:\n" + json.dumps(status, indent=2))
    if (status.get("supervisor") or {}).get("hash") != want:
        fail(f"the running config is not the stand-in's spec (hash {want})")
    log(f"running config hash {want} = hash of the stand-in's spec")

    # Prometheus' view: everything through Envoy's scrape port, admitted by allowed_cidrs.
    _, prom = http_get(f"http://127.0.0.1:{scrape_port}/stats/prometheus")
    _, agent_metrics = http_get(f"http://127.0.0.1:{scrape_port}/metrics/agent")
    if "envoy_server_live" not in prom or "vpsie_lb_agent_" not in agent_metrics:
        fail("scrape through Envoy is missing Envoy's or the agent's metrics")
    applies = [ln for ln in agent_metrics.splitlines()
               if re.match(r'vpsie_lb_\w+_applies_total\{result="applied"\}', ln)]
    log(f"scrape through Envoy (guest port 9100): {len(prom.splitlines())} Envoy lines; "
        f"{'; '.join(applies) or 'agent metrics present'}")

    # Envoy runs as vpsie-lb, holding only CAP_NET_BIND_SERVICE (bit 10), yet serves port 80.
    proc = qga.check("pid=$(pgrep -o -x envoy); ps -o user=,pid=,comm= -p $pid; "
                     "grep -E '^Cap(Eff|Prm|Bnd):' /proc/$pid/status")
    log("envoy process:\n" + proc.strip())
    caps = dict(re.findall(r"^(Cap\w+):\s+([0-9a-f]+)$", proc, re.M))
    if not proc.split()[0] == "vpsie-lb" or int(caps.get("CapEff", "0"), 16) != 1 << 10:
        fail("Envoy must run as vpsie-lb with CAP_NET_BIND_SERVICE alone")

    sysctl = qga.check("sysctl -n net.core.somaxconn net.ipv4.tcp_max_syn_backlog fs.file-max "
                       "fs.inotify.max_user_instances; "
                       "cat /proc/$(pgrep -o -x envoy)/limits | grep 'open files'")
    log("tuning: " + " | ".join(sysctl.split("\n")).strip())
    if not sysctl.startswith("65535\n65535\n2097152\n8192") or "1048576" not in sysctl:
        fail("sysctl or file-limit tuning is not in force")
    # Every line of the sysctl file applied (a rejected key fails systemd-sysctl.service).
    sysctl_unit = qga.check("systemctl show -p Result --value systemd-sysctl.service").strip()
    if sysctl_unit != "success":
        fail(f"systemd-sysctl.service did not apply every setting: {sysctl_unit}")

    # With the cpu controller on (CPUWeight=), Envoy finds cpu.max in its cgroup and does not
    # warn (its early warnings go to the unit's journal).
    code, cpu_max = qga.sh("cat /sys/fs/cgroup/system.slice/vpsie-lb-envoy.service/cpu.max")
    warnings = qga.check("journalctl -b -u vpsie-lb-envoy.service | "
                         "grep -c 'cgroup v2 file not accessible' || true").strip()
    if code != 0 or warnings != "0":
        fail(f"Envoy cannot read its cgroup's cpu.max ({cpu_max.strip()}); "
             f"{warnings} warnings in the journal")
    log(f"Envoy's cgroup cpu.max: {cpu_max.strip()}; no cgroup warning in the journal")

    # The shipped logrotate rule works on Envoy's log (as vpsie-lb, in its 0700 directory), and
    # Envoy is still LIVE afterwards.
    rotated = qga.check("logrotate -f /etc/logrotate.d/vpsie-lb && ls /var/log/vpsie-lb && "
                        "curl -sf --unix-socket /run/vpsie-lb/envoy-admin.sock http://envoy-admin/ready")
    if "envoy.log.1" not in rotated or "LIVE" not in rotated:
        fail(f"logrotate did not rotate Envoy's log, or Envoy is not LIVE after it:\n{rotated}")
    log("logrotate rotated Envoy's log: " + " ".join(rotated.split()))

    machine_id = qga.check("cat /etc/machine-id").strip()
    if not re.fullmatch(r"[0-9a-f]{32}", machine_id):
        fail(f"no machine id was generated at first boot: {machine_id!r}")
    host_keys = qga.check("ls /etc/ssh/ | grep -c '^ssh_host_.*_key$' || true").strip()
    if host_keys in ("", "0"):
        fail("no SSH host keys were generated at first boot")
    log(f"first boot generated machine-id {machine_id} and {host_keys} SSH host keys")

    # Restarting the agent unit must not touch the supervisor or Envoy.
    pids = "systemctl show -p MainPID --value vpsie-lb-envoy.service; pgrep -o -x envoy"
    before = qga.check(pids).split()
    qga.check("systemctl restart vpsie-lb-agent.service")
    wait_for("the agent unit active again", lambda: (
        qga.sh("systemctl is-active vpsie-lb-agent.service")[0] == 0, "restarting"), 60)
    after = qga.check(pids).split()
    if before != after:
        fail(f"restarting the agent restarted the supervisor or Envoy: {before} -> {after}")
    status_code, _ = http_get(f"http://127.0.0.1:{http_port}/")
    log(f"agent restarted; supervisor pid {after[0]} and envoy pid {after[1]} unchanged; "
        f"request -> {status_code}")

    served = hot_restart_under_load(qga, http_port)
    access_log_and_journal(qga, served)
    reboot_without_api(qga, http_port)
    high_availability(qga)

    exposure = qga.check("for u in vpsie-lb-envoy vpsie-lb-agent vpsie-lb-keepalived; do printf '%s: ' $u; "
                         "systemd-analyze security --no-pager $u.service | tail -n1; done")
    log("systemd-analyze security in the booted guest:\n" + exposure.strip())


def change_under_load(qga, http_port, new, want_method, want_epoch, must_see):
    """A spec change while the host keeps sending requests: the agent must apply it the way
    expected (`live` into the running Envoy, or `hot_restart` into epoch `want_epoch`) under the
    units' hardening, and no request may fail."""
    stop = threading.Event()
    tally = {"ok": 0, "failed": 0, "errors": [], "seen": set()}

    def load():
        while not stop.is_set():
            try:
                status, body = http_get(f"http://127.0.0.1:{http_port}/", timeout=15)
                if status == 200:
                    tally["ok"] += 1
                    tally["seen"].add(body.strip())
                    continue
                tally["errors"].append(f"status {status}")
            except Exception as e:  # noqa: BLE001 - every failure counts
                tally["errors"].append(repr(e))
            tally["failed"] += 1

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        new_spec = json.dumps(new, indent=2) + "\n"
        # Written next to the old one and renamed: the stand-in never reads half a file.
        qga.check("cat > /etc/vpsie-api-sim/lb.json.new && "
                  "mv /etc/vpsie-api-sim/lb.json.new /etc/vpsie-api-sim/lb.json", stdin=new_spec)
        want = stand_in_hash(qga)

        def applied():
            sup = supervisor_status(qga)
            method = (sup.get("last_apply") or {}).get("method")
            return (sup.get("hash") == want and sup.get("envoy_state") == "LIVE",
                    f"epoch {sup.get('epoch')} method {method} hash {sup.get('hash')}")
        got = wait_for("the changed spec to go live", applied, 120)
        wait_for(f"a request to reach the backend {must_see}",
                 lambda: (must_see in tally["seen"], sorted(tally["seen"])), 60)
    finally:
        stop.set()
        for w in workers:
            w.join()
    log(f"spec change applied ({got}); under load: {tally['ok']} requests "
        f"answered by {sorted(tally['seen'])}, {tally['failed']} failed")
    if tally["failed"]:
        fail(f"{tally['failed']} requests failed during the change: {tally['errors'][:5]}")
    if not got.startswith(f"epoch {want_epoch} method {want_method} "):
        fail(f"expected epoch {want_epoch} by {want_method}, got {got}")
    return tally["ok"]


def hot_restart_under_load(qga, http_port):
    """A backend added goes into the running Envoy live (still epoch 0); a bootstrap change
    (maxConnections) needs a new process: a hot restart into epoch 1. Both under load."""
    served = change_under_load(qga, http_port, spec(("web1", "web2", "web3")), "live", 0, "web3")
    bigger = spec(("web1", "web2", "web3"))
    bigger["maxConnections"] = 20000
    served += change_under_load(qga, http_port, bigger, "hot_restart", 1, "web3")
    return served


def access_log_and_journal(qga, served):
    """Access logs go to their own file, never to the journal: every request served under load
    is a JSON line in /var/log/vpsie-lb/access.log, the supervisor's own lines about those
    changes (the live apply, the hot restart) are in its journal, no access log line is, and
    journald suppressed nothing of the unit. `systemctl reload` (SIGHUP) works under the unit's
    hardening and applies the access log settings live."""
    # Envoy flushes its log buffer every second.
    count = "cat /var/log/vpsie-lb/access.log* | wc -l"
    wait_for(f"{served} access log lines", lambda: (
        int(qga.check(count).strip()) >= served, qga.check(count).strip() + " lines"), 30)
    lines = int(qga.check(count).strip())
    last = json.loads(qga.check("tail -n 1 /var/log/vpsie-lb/access.log"))
    if last.get("type") != "http" or last.get("rule") != "web" or last.get("status") != 200:
        fail(f"the last access log line is not a request of rule web: {last}")
    journal = qga.check("journalctl -b -u vpsie-lb-envoy.service --no-pager -o cat")
    for needle in ('"request_id"', '"user_agent"', '"upstream_ms"'):
        if needle in journal:
            fail(f"an access log line ({needle}) in the supervisor's journal")
    events = []
    for line in journal.splitlines():
        try:
            fields = json.loads(line).get("fields", {})
        except ValueError:
            continue
        events.append((fields.get("message"), fields.get("epoch")))
    if not any(m == "applied live" for m, _ in events):
        fail("the supervisor's 'applied live' line is missing from its journal")
    if ("envoy epoch is LIVE", 1) not in events:
        fail("the supervisor's line on epoch 1 going LIVE is missing from its journal")
    # journald's own lines only (the guest agent logs each command it runs, this one included).
    suppressed = qga.check("journalctl -b -t systemd-journald --no-pager -o cat | "
                           "grep 'Suppressed' || true").strip()
    if "vpsie-lb" in suppressed:
        fail(f"journald suppressed messages of our units: {suppressed}")
    pid = qga.check("systemctl show -p MainPID --value vpsie-lb-envoy.service").strip()
    qga.check("systemctl reload vpsie-lb-envoy.service")
    wait_for("the supervisor to read its settings again", lambda: (
        "access log settings unchanged" in qga.check(
            "journalctl -b -u vpsie-lb-envoy.service --no-pager -o cat"), "waiting"), 30)
    if qga.check("systemctl show -p MainPID --value vpsie-lb-envoy.service").strip() != pid:
        fail("systemctl reload restarted the supervisor")
    log(f"access log: {lines} JSON lines for {served} requests under load; none in the journal, "
        f"the supervisor's apply lines all there, nothing suppressed; systemctl reload read the settings")


STATUS_JSON = "vpsie-lb-agent status --json --config /etc/vpsie-lb/agent.yaml"


def high_availability(qga):
    """keepalived under its unit, as shipped: skipped while the settings have no ha section;
    with one (a peer that never answers: the guest reaches nothing), the node becomes master and
    holds the virtual IP, status and metrics say so; Envoy killed, it gives the address away
    and takes it back; a changed settings file re-renders keepalived's config and reloads it."""
    def ha_diagnose():
        _, out = qga.sh(
            "ls -la /run/vpsie-lb /run/vpsie-lb/ha; cat /run/vpsie-lb/ha/*.json; "
            "journalctl -b --no-pager -n 80 -u vpsie-lb-keepalived; "
            # The notify script by hand, as keepalived runs it (its user, the unit's sandbox).
            "systemd-run --wait --pipe --quiet -p User=vpsie-lb -p ProtectSystem=strict "
            "-p ReadWritePaths=/run -p PrivateTmp=yes -p NoNewPrivileges=yes "
            "/usr/local/bin/vpsie-lb-agent ha-notify --config /etc/vpsie-lb/agent.yaml "
            "INSTANCE vip_0 MASTER 200; echo notify-rc=$?", 60)
        print("--- high availability ---\n" + out, file=sys.stderr)
    DIAGNOSE.append(ha_diagnose)
    _, active = qga.sh("systemctl is-active vpsie-lb-keepalived.service")
    result = qga.check("systemctl show -p ConditionResult -p ExecMainStatus --value "
                       "vpsie-lb-keepalived.service").split()
    if active.strip() != "inactive" or "masked" in qga.check(
            "systemctl is-enabled vpsie-lb-keepalived.service || true"):
        fail(f"without an ha section the keepalived unit must stay inactive: {active} {result}")
    if qga.check("systemctl is-enabled keepalived.service || true").strip() != "masked":
        fail("Debian's own keepalived.service must be masked")
    # A network of the test's own inside the guest (a veth pair; 198.18.0.0/15): the guest's
    # user-mode NIC is not the test's to add addresses to, and nothing here leaves the guest.
    iface = "vha0"
    qga.check(f"ip link add {iface} type veth peer name vha1 && "
              f"ip addr add 198.18.0.2/24 dev {iface} && ip link set {iface} up && "
              "ip link set vha1 up")
    addr, peer, vip, vip2 = "198.18.0.2", "198.18.0.3", "198.18.0.200", "198.18.0.201"
    section = (f"ha:\n  mode: active_standby\n  interface: {iface}\n  node_address: {addr}\n"
               f"  peers: [{peer}]\n  virtual_ips: [{vip}/24]\n")
    qga.check("cat >> /etc/vpsie-lb/agent.yaml", stdin=section)
    # The daemons read their settings at start; keepalived's unit renders its config.
    qga.check("systemctl restart vpsie-lb-envoy.service vpsie-lb-agent.service")
    qga.check("systemctl start vpsie-lb-keepalived.service")
    log("keepalived config:\n" + qga.check("cat /etc/keepalived/vpsie-lb.conf"))

    def holds(ip):
        def probe():
            code, out = qga.sh(f"ip -o -4 addr show dev {iface}")
            st = qga.sh("vpsie-lb-agent status --config /etc/vpsie-lb/agent.yaml")[1]
            line = next((l for l in st.splitlines() if l.startswith("Virtual IP")), "")
            return (f" {ip}/" in out and f"{ip}/24 MASTER (owner)" in line), f"{line} | {out.strip()}"
        return probe
    got = wait_for(f"the node to hold {vip} as VRRP master", holds(vip), 120, interval=1)
    log(f"high availability: {got}")
    metrics = qga.check("curl -sf http://127.0.0.1:9101/metrics")
    if f'vpsie_lb_agent_vrrp_state{{state="master",vip="{vip}"}} 1' not in metrics:
        fail("the agent's metrics do not say master:\n"
             + "\n".join(l for l in metrics.splitlines() if "vrrp" in l))

    def changes():
        st = json.loads(qga.check(STATUS_JSON))
        return next((v.get("transitions", 0) for v in st.get("vrrp", []) if v["vip"].startswith(vip + "/")), 0)
    before = changes()
    qga.check("pkill -KILL -x envoy")
    def away_and_back():
        n = changes()
        ok, line = holds(vip)()
        return ok and n >= before + 2, f"{n} changes (were {before}); {line}"
    got = wait_for("the virtual IP given away when Envoy died and taken back", away_and_back,
                   120, interval=1)
    log(f"envoy killed: {got}")

    qga.check(f"sed -i 's#virtual_ips: \\[{vip}/24\\]#virtual_ips: [{vip2}/24]#' "
              "/etc/vpsie-lb/agent.yaml")
    got = wait_for(f"keepalived reloaded by the path unit: {vip2} held, {vip} gone",
                   lambda: (lambda out: (f" {vip2}/" in out and f" {vip}/" not in out, out))(
                       qga.sh(f"ip -o -4 addr show dev {iface}")[1]), 120, interval=1)
    log(f"settings changed, keepalived reloaded: {got.strip()}")
    warnings = qga.check("journalctl -b -u vpsie-lb-keepalived.service --no-pager | "
                         "grep -iE 'error|denied|cannot|failed' || true")
    log("keepalived's journal, errors and denials (expected: the unreachable peer only):\n"
        + warnings.strip())


def agent_status(qga):
    """`vpsie-lb-agent status --json` in the guest, as an operator would run it."""
    return json.loads(qga.check(STATUS_JSON))


def supervisor_status(qga):
    return agent_status(qga).get("supervisor") or {}


def stand_in_hash(qga):
    """The config hash of the spec the stand-in serves, computed in the guest."""
    return qga.check("vpsie-lb-agent hash --spec /etc/vpsie-api-sim/lb.json "
                     "--config /etc/vpsie-lb/agent.yaml").strip().split()[-1]


def reboot_without_api(qga, http_port):
    """A reboot while the API is unreachable: the load balancer must come back by itself with
    the last config it applied, and, once the API answers with the same spec, not reload.
    (The stand-in's unit is not enabled, so after the reboot the API is down.)"""
    want = supervisor_status(qga).get("hash")
    boot_id = qga.check("cat /proc/sys/kernel/random/boot_id").strip()
    t = time.monotonic()
    # Not waited for: the guest agent goes down with the guest.
    qga.call("guest-exec", {"path": "/bin/systemctl", "arg": ["reboot"]})
    qga.sock.close()
    # The old guest agent may still answer for a moment: wait for a new boot id.
    def rebooted():
        qga.connect(time.monotonic() + 600 * A["slow"])
        code, out = qga.sh("cat /proc/sys/kernel/random/boot_id")
        return code == 0 and out.strip() != boot_id, out.strip()
    wait_for("the VM to reboot", rebooted, 600, interval=3)
    log(f"rebooted in {time.monotonic() - t:.0f}s")

    def serving_last_config():
        _, active = qga.sh("systemctl is-active vpsie-lb-envoy.service vpsie-lb-agent.service "
                           "vpsie-api-sim.service")
        # Early in the boot the supervisor may not answer yet: `status` then exits 1, which is
        # "not yet" here, not a failure.
        code, out = qga.sh(STATUS_JSON)
        if code != 0:
            return False, f"units {active.split()}, status not answering yet: {out.strip()[-200:]}"
        sup = json.loads(out).get("supervisor") or {}
        return (active.split()[:2] == ["active", "active"] and sup.get("hash") == want
                and sup.get("envoy_state") == "LIVE",
                f"units {active.split()}, epoch {sup.get('epoch')}, {sup.get('envoy_state')}, "
                f"hash {sup.get('hash')}")
    got = wait_for("Envoy LIVE with the last applied config after the reboot",
                   serving_last_config, 180)
    log(f"after the reboot, API down: {got}")
    if "'inactive'" not in got:
        fail("the stand-in should not be running after the reboot (it is not enabled)")

    qga.check("systemctl start vpsie-api-sim.service")
    wait_for("a request through the VM after the reboot", lambda: (
        http_get(f"http://127.0.0.1:{http_port}/")[0] == 200, "waiting"), 60)
    # An unchanged spec must not reload Envoy: judged once the agent has finished a poll
    # against the API that is back (its state says so), not after a guessed wait.
    def polled_again():
        poll = (agent_status(qga).get("agent") or {}).get("last_poll_result") or ""
        return poll.split(":")[0] in ("unchanged", "not_modified"), f"last poll: {poll}"
    wait_for("a finished poll of the agent after the API came back", polled_again, 120,
             interval=0.5)
    sup = supervisor_status(qga)
    if sup.get("epoch") != 0 or sup.get("hash") != want:
        fail(f"the unchanged spec reloaded Envoy after the reboot: {sup}")
    log(f"API back: requests served, still epoch 0 with hash {want} (no reload)")


if __name__ == "__main__":
    main()

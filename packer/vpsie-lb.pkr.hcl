# The VPSie load balancer image: Debian 12 cloud image + packer/scripts/provision.sh, for amd64
# and arm64. Run through scripts/build-image.sh (`make build-images`), which stages the agent
# and Envoy for each architecture first; docs/images.md says what the host needs.

locals {
  # A build-only login: created by the seed below, removed by the shutdown command, so no image
  # carries it. The password is new for every build and never leaves this process.
  build_user     = "vpsie-build"
  build_password = uuidv4()
  seed = {
    "meta-data" = "instance-id: vpsie-lb-build\nlocal-hostname: vpsie-lb-build\n"
    "user-data" = <<-EOT
      #cloud-config
      users:
        - name: ${local.build_user}
          sudo: "ALL=(ALL) NOPASSWD:ALL"
          shell: /bin/bash
          lock_passwd: false
          plain_text_passwd: "${local.build_password}"
      ssh_pwauth: true
      package_update: false
    EOT
  }
  stage = "/tmp/vpsie-lb-stage"
  # cleanup.sh has already run; the build user goes last, in one root shell, since sudo would
  # no longer find it. cloud-init's sudoers and sshd snippets for it go too.
  shutdown = "sudo sh -c 'userdel --force --remove ${local.build_user}; rm -f /etc/sudoers.d/90-cloud-init-users /etc/ssh/sshd_config.d/50-cloud-init.conf; shutdown -P now'"
}

# What both architectures share. The build block below names the two variants (qemu.amd64,
# qemu.arm64) and adds what differs; Packer lets it add settings, not change these.
source "qemu" "debian12" {
  accelerator      = var.accelerator
  cpus             = 2
  memory           = 2048
  disk_image       = true
  disk_size        = var.disk_size
  disk_interface   = "virtio"
  net_device       = "virtio-net"
  format           = "qcow2"
  disk_compression = true
  headless         = true
  cd_content       = local.seed
  cd_label         = "cidata"
  communicator     = "ssh"
  ssh_username     = local.build_user
  ssh_password     = local.build_password
  shutdown_command = local.shutdown
}

build {
  source "source.qemu.debian12" {
    name             = "amd64"
    qemu_binary      = "qemu-system-x86_64"
    machine_type     = "pc"
    iso_url          = var.base_image_amd64.url
    iso_checksum     = var.base_image_amd64.checksum
    output_directory = "${var.output_dir}/packer-amd64"
    vm_name          = "vpsie-lb-${var.version}-amd64.qcow2"
    ssh_timeout      = "30m"
    shutdown_timeout = "5m"
  }

  # arm64 boots by UEFI on QEMU's virt machine, which has no IDE for the seed CD. Under software
  # emulation (an amd64 host) it is slow: hence the longer timeouts.
  source "source.qemu.debian12" {
    name              = "arm64"
    qemu_binary       = "qemu-system-aarch64"
    machine_type      = "virt"
    qemuargs          = [["-cpu", var.accelerator == "kvm" ? "host" : "max"]]
    efi_boot          = true
    efi_firmware_code = var.arm64_firmware_code
    efi_firmware_vars = var.arm64_firmware_vars
    cdrom_interface   = "virtio-scsi"
    iso_url           = var.base_image_arm64.url
    iso_checksum      = var.base_image_arm64.checksum
    output_directory  = "${var.output_dir}/packer-arm64"
    vm_name           = "vpsie-lb-${var.version}-arm64.qcow2"
    ssh_timeout       = "60m"
    shutdown_timeout  = "10m"
  }

  # cloud-init must be done (users, apt sources) before anything is installed.
  provisioner "shell" {
    inline = [
      "cloud-init status --wait >/dev/null || true",
      "mkdir -p ${local.stage}",
    ]
  }

  provisioner "shell" {
    execute_command  = "sudo -E sh -c '{{ .Vars }} {{ .Path }}'"
    environment_vars = ["DEBIAN_FRONTEND=noninteractive"]
    inline = var.apt_upgrade ? [
      "apt-get update -q",
      "apt-get -y -q -o Dpkg::Options::=--force-confold upgrade",
    ] : ["echo 'apt_upgrade=false: keeping the base image packages'"]
  }

  # keepalived, for high availability (docs/operating.md, "High availability"): Debian's package, by name.
  provisioner "shell" {
    execute_command  = "sudo -E sh -c '{{ .Vars }} {{ .Path }}'"
    environment_vars = ["DEBIAN_FRONTEND=noninteractive"]
    inline = [
      "apt-get update -q",
      "apt-get -y -q --no-install-recommends install keepalived",
    ]
  }

  # Everything provisioning installs, for this source's architecture (make stage-<arch>).
  provisioner "file" {
    source      = "${var.output_dir}/stage-${source.name}/"
    destination = local.stage
  }

  # The same two scripts the image test runs in its chroot.
  provisioner "shell" {
    execute_command = "sudo sh -c '{{ .Vars }} {{ .Path }}'"
    inline = [
      "${local.stage}/provision.sh ${local.stage}",
      "${local.stage}/cleanup.sh ${local.stage}",
    ]
  }
}

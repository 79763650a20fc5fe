variable "version" {
  type        = string
  description = "Image version, part of the file name (scripts/build-image.sh passes <crate version>-<git sha>)."
  default     = "dev"
}

variable "output_dir" {
  type        = string
  description = "Where the stage directories are read from and the images written to."
  default     = "output"
}

# Debian 12 (bookworm) genericcloud images, pinned by SHA-512 to one dated release. Debian
# removes dated releases after some months: to move on, take the new date's SHA512SUMS from the
# same directory and update url and checksum together (docs/images.md).
variable "base_image_amd64" {
  type = object({ url = string, checksum = string })
  default = {
    url      = "https://cloud.debian.org/images/cloud/bookworm/20250316-2053/debian-12-genericcloud-amd64-20250316-2053.qcow2"
    checksum = "sha512:0ea74c246c5eb8c6eb5b8e3b8b5268b16a791dfbc8f0bca27d9d787a3f4c50a7830bfc690e6902dfe78031fb2b2c3892349990d6b26b13112252a81d6f20f792"
  }
}

variable "base_image_arm64" {
  type = object({ url = string, checksum = string })
  default = {
    url      = "https://cloud.debian.org/images/cloud/bookworm/20250316-2053/debian-12-genericcloud-arm64-20250316-2053.qcow2"
    checksum = "sha512:a6733f7f76ef62706e9e04dbad15d7ca251a2875d31025d9e8893391985b7e0610c96b6133ec5b2fa5fc4426bb3e6dcc91da77d0b3dc59bf4352e30625fc180d"
  }
}

variable "disk_size" {
  type        = string
  description = "Size of the image's disk; the root filesystem grows to the VM's disk at first boot (cloud-init growpart)."
  default     = "4G"
}

variable "accelerator" {
  type        = string
  description = "QEMU accelerator: kvm on a native host of the image's architecture, tcg (slow, any host) otherwise."
  default     = "kvm"
}

variable "arm64_firmware_code" {
  type        = string
  description = "UEFI firmware for the arm64 VM (Debian package qemu-efi-aarch64)."
  default     = "/usr/share/AAVMF/AAVMF_CODE.fd"
}

variable "arm64_firmware_vars" {
  type    = string
  default = "/usr/share/AAVMF/AAVMF_VARS.fd"
}

variable "apt_upgrade" {
  type        = bool
  description = "Install Debian's pending (security) updates into the image during the build."
  default     = true
}

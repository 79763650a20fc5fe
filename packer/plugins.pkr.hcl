# The Packer and plugin versions the templates are written for. `packer init packer/` installs
# the qemu plugin by name (scripts/build-image.sh runs it).
packer {
  required_version = ">= 1.9.0"
  required_plugins {
    qemu = {
      version = "~> 1.1"
      source  = "github.com/hashicorp/qemu"
    }
  }
}

# Built-in resources only: terraform_data with the file, remote-exec and local-exec provisioners.
# No provider is declared, so `terraform init` downloads nothing and works offline; `terraform
# providers` lists only terraform.io/builtin/terraform. Do not add a registry provider here.
#
# 1.9 is the first version whose variable validations may refer to other objects (the check that
# every host is a node of topology.toml lives in variables.tf).
terraform {
  required_version = ">= 1.9.0"
}

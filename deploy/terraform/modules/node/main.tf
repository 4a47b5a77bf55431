# One hf-mirror node on its host: one terraform_data whose replacement is the node's deploy step.
#
# Replacing it (any trigger below changed) uploads the release, the topology, the node's own
# certificate and key, the cluster's gossip key and operator token, and the rendered units, then runs
# files/hf-mirror-step.sh on the host: verify, install, gate on the other nodes being live, drain and
# restart on the new release, wait until it is ready, live, caught up and a catalog voter, or switch
# back and fail. create_before_destroy makes the replacement's provisioners the whole upgrade
# (Terraform does not run destroy-time provisioners of a replaced object); the destroy-time step,
# which drains and stops the node, runs on `terraform destroy` and when the node left the topology.

locals {
  name         = var.node.name
  install_root = var.cluster.install_root
  incoming     = "${var.cluster.install_root}/incoming"

  # The HTTP port: the socket unit listens on http_listen; the step and the anycast helper ask its
  # /readyz on loopback when it listens on every address, else on the address itself.
  http_port   = regex(":([0-9]+)$", var.node.http_listen)[0]
  listen_host = replace(var.node.http_listen, "/:[0-9]+$/", "")
  local_url   = contains(["0.0.0.0", "[::]", ""], local.listen_host) ? "http://127.0.0.1:${local.http_port}" : "http://${local.listen_host}:${local.http_port}"
  # The operator port (status, drain, metrics; `hf-mirror serve --operator-listen`): the step,
  # ExecStop's drain and `hf-mirror status` on the host ask it the same way, with the operator token.
  operator_port      = regex(":([0-9]+)$", var.node.operator_listen)[0]
  operator_host      = replace(var.node.operator_listen, "/:[0-9]+$/", "")
  operator_local_url = contains(["0.0.0.0", "[::]", ""], local.operator_host) ? "http://127.0.0.1:${local.operator_port}" : "http://${local.operator_host}:${local.operator_port}"
  # Where the node reads the cluster's operator token (shipped like a key: 0640 root:hf-mirror).
  remote_token_file = "/etc/hf-mirror/operator-token"
  endpoint_host     = strcontains(var.node.host, ":") ? "[${var.node.host}]" : var.node.host
  listen_fds        = var.node.dns_listen == null ? "http=3" : "http=3,dns_udp=4,dns_tcp=5"

  ca_pem   = "${var.cluster.certs_dir}/ca.pem"
  node_pem = "${var.cluster.certs_dir}/${var.node.name}.pem"
  node_key = "${var.cluster.certs_dir}/${var.node.name}.key"
  # The cluster's gossip key (every datagram carries a MAC under it; the same file on every node).
  gossip_key = "${var.cluster.certs_dir}/gossip.key"
  tls        = var.node.tls_cert != null

  # Anycast (optional): BIRD's configuration and the two units, or nothing.
  anycast   = var.cluster.anycast
  router_id = try(coalesce(var.node.bgp.router_id, var.node.host), var.node.host)
  bird_conf = local.anycast == null ? "" : templatefile("${path.module}/templates/bird.conf.tftpl", {
    name        = var.node.name
    address     = local.anycast.address
    router_id   = local.router_id
    local_as    = var.node.bgp.local_as
    neighbor    = var.node.bgp.neighbor
    neighbor_as = var.node.bgp.neighbor_as
  })
  bird_unit = local.anycast == null ? "" : templatefile("${path.module}/templates/hf-mirror-bird.service.tftpl", {
    name = var.node.name
  })
  anycast_unit = local.anycast == null ? "" : templatefile("${path.module}/templates/hf-mirror-anycast.service.tftpl", {
    name         = var.node.name
    address      = local.anycast.address
    local_url    = local.local_url
    install_root = var.cluster.install_root
  })

  service_unit = templatefile("${path.module}/templates/hf-mirror.service.tftpl", {
    name               = var.node.name
    data_dir           = var.node.data_dir
    listen_fds         = local.listen_fds
    operator_listen    = var.node.operator_listen
    operator_local_url = local.operator_local_url
    token_file         = local.remote_token_file
    install_root       = var.cluster.install_root
    stop_timeout       = var.cluster.stop_timeout
    limit_nofile       = var.cluster.limit_nofile
    tls                = local.tls
    environment        = var.node.environment
    anycast            = local.anycast
  })
  socket_unit = templatefile("${path.module}/templates/hf-mirror.socket.tftpl", {
    name        = var.node.name
    http_listen = var.node.http_listen
    dns_listen  = var.node.dns_listen
  })

  step_environment = join(" ", [for key, value in {
    HFM_NODE          = var.node.name
    HFM_SLOT          = tostring(var.slot)
    HFM_SHA256        = var.cluster.binary_sha256
    HFM_ROOT          = var.cluster.install_root
    HFM_INCOMING      = local.incoming
    HFM_DATA_DIR      = var.node.data_dir
    HFM_CERTS_DIR     = var.cluster.remote_certs_dir
    HFM_LOCAL_URL     = local.local_url
    HFM_OPERATOR_URL  = local.operator_local_url
    HFM_TLS           = local.tls ? "1" : "0"
    HFM_READY_TIMEOUT = tostring(var.cluster.ready_timeout)
    HFM_PEERS_TIMEOUT = tostring(var.cluster.peers_timeout)
    HFM_ANYCAST       = local.anycast == null ? "" : local.anycast.address
  } : "${key}='${replace(value, "'", "")}'"])

  # Runs what follows as root: directly, or through sudo for another SSH user.
  as_root = "S=; [ \"$(id -u)\" -eq 0 ] || S='sudo -n'"
}

resource "terraform_data" "node" {
  # What makes this node restart. Hashes, never contents, of the files: no key material reaches the
  # state. The rendered units are kept as text so that a plan shows what changed in them.
  triggers_replace = {
    node            = var.node.name
    host            = var.node.host
    binary_sha256   = var.cluster.binary_sha256
    topology_sha256 = var.cluster.topology_sha256
    certificates = {
      ca_pem   = filesha256(local.ca_pem)
      node_pem = filesha256(local.node_pem)
      node_key = filesha256(local.node_key)
      # the cluster's shared secrets, hashed like the keys
      gossip_key     = filesha256(local.gossip_key)
      operator_token = filesha256(var.cluster.operator_token_file)
    }
    tls = local.tls ? {
      cert = filesha256(var.node.tls_cert)
      key  = filesha256(var.node.tls_key)
    } : null
    service_unit = local.service_unit
    socket_unit  = local.socket_unit
    anycast = local.anycast == null ? null : {
      bird_conf    = local.bird_conf
      bird_unit    = local.bird_unit
      anycast_unit = local.anycast_unit
      helper       = filesha256("${path.module}/files/hf-mirror-anycast.sh")
    }
  }

  # What the destroy-time step and the outputs need (a destroy-time provisioner may only read self).
  input = {
    name             = var.node.name
    slot             = var.slot
    host             = var.node.host
    port             = var.node.port
    user             = var.node.user
    host_key         = var.node.host_key
    private_key_file = var.ssh.private_key_file
    agent            = var.ssh.agent
    bastion_host     = try(var.ssh.bastion.host, null)
    bastion_port     = try(var.ssh.bastion.port, null)
    bastion_user     = try(var.ssh.bastion.user, null)
    bastion_host_key = try(var.ssh.bastion.host_key, null)
    install_root     = var.cluster.install_root
    remote_certs_dir = var.cluster.remote_certs_dir
    data_dir         = var.node.data_dir
    sha256           = var.cluster.binary_sha256
    local_url        = local.local_url
    http_port        = local.http_port
    operator_url     = local.operator_local_url
    anycast_address  = try(local.anycast.address, "")
  }

  lifecycle {
    create_before_destroy = true

    precondition {
      condition     = fileexists(local.ca_pem) && fileexists(local.node_pem) && fileexists(local.node_key) && fileexists(local.gossip_key)
      error_message = "Certificates of ${var.node.name} or the gossip key missing in ${var.cluster.certs_dir}: run `hf-mirror cluster certs --config TOPOLOGY --out ${var.cluster.certs_dir}` before planning (it keeps what is there and issues only what is missing)."
    }
    precondition {
      condition     = fileexists(var.cluster.operator_token_file)
      error_message = "The operator token file ${var.cluster.operator_token_file} does not exist: make it once, e.g. `openssl rand -hex 32 > ${var.cluster.operator_token_file}`."
    }
    precondition {
      condition     = can(regex("^ssh-[a-z0-9-]+ [A-Za-z0-9+/=]+", var.node.host_key)) || can(regex("^ecdsa-sha2-[a-z0-9-]+ [A-Za-z0-9+/=]+", var.node.host_key))
      error_message = "nodes.${var.node.name}.host_key must be the host's public key line (e.g. the contents of /etc/ssh/ssh_host_ed25519_key.pub)."
    }
  }

  connection {
    type                = "ssh"
    host                = self.input.host
    port                = self.input.port
    user                = self.input.user
    host_key            = self.input.host_key
    private_key         = self.input.private_key_file == null ? null : file(self.input.private_key_file)
    agent               = self.input.agent
    bastion_host        = self.input.bastion_host
    bastion_port        = self.input.bastion_port
    bastion_user        = self.input.bastion_user
    bastion_host_key    = self.input.bastion_host_key
    bastion_private_key = self.input.private_key_file == null ? null : file(self.input.private_key_file)
    timeout             = "2m"
  }

  # An empty upload directory, writable by the SSH user only.
  provisioner "remote-exec" {
    inline = [
      "set -eu",
      local.as_root,
      "$S install -d -m 0755 ${local.install_root}",
      "$S rm -rf ${local.incoming}",
      "$S install -d -m 0700 -o \"$(id -u)\" -g \"$(id -g)\" ${local.incoming}",
    ]
  }

  provisioner "file" {
    source      = var.cluster.binary
    destination = "${local.incoming}/hf-mirror"
  }
  provisioner "file" {
    source      = var.cluster.topology
    destination = "${local.incoming}/topology.toml"
  }
  provisioner "file" {
    source      = local.ca_pem
    destination = "${local.incoming}/ca.pem"
  }
  provisioner "file" {
    source      = local.node_pem
    destination = "${local.incoming}/node.pem"
  }
  provisioner "file" {
    source      = local.node_key
    destination = "${local.incoming}/node.key"
  }
  provisioner "file" {
    source      = local.gossip_key
    destination = "${local.incoming}/gossip.key"
  }
  provisioner "file" {
    source      = var.cluster.operator_token_file
    destination = "${local.incoming}/operator-token"
  }
  # TLS files when the node has them (a placeholder otherwise, which the step ignores).
  provisioner "file" {
    source      = local.tls ? var.node.tls_cert : "${path.module}/files/no-tls.placeholder"
    destination = "${local.incoming}/tls.pem"
  }
  provisioner "file" {
    source      = local.tls ? var.node.tls_key : "${path.module}/files/no-tls.placeholder"
    destination = "${local.incoming}/tls.key"
  }
  provisioner "file" {
    content     = local.service_unit
    destination = "${local.incoming}/hf-mirror.service"
  }
  provisioner "file" {
    content     = local.socket_unit
    destination = "${local.incoming}/hf-mirror.socket"
  }
  provisioner "file" {
    source      = "${path.module}/files/hf-mirror-step.sh"
    destination = "${local.incoming}/hf-mirror-step.sh"
  }
  # Anycast files (placeholders without anycast; the step then removes any left from before).
  provisioner "file" {
    content     = local.anycast == null ? "# no anycast\n" : local.bird_conf
    destination = "${local.incoming}/bird.conf"
  }
  provisioner "file" {
    content     = local.anycast == null ? "# no anycast\n" : local.bird_unit
    destination = "${local.incoming}/hf-mirror-bird.service"
  }
  provisioner "file" {
    content     = local.anycast == null ? "# no anycast\n" : local.anycast_unit
    destination = "${local.incoming}/hf-mirror-anycast.service"
  }
  provisioner "file" {
    source      = "${path.module}/files/hf-mirror-anycast.sh"
    destination = "${local.incoming}/hf-mirror-anycast.sh"
  }

  provisioner "remote-exec" {
    inline = [
      "set -eu",
      local.as_root,
      "$S env ${local.step_environment} sh ${local.incoming}/hf-mirror-step.sh deploy",
    ]
  }

  # `terraform destroy`, or the node left topology.toml: drain and stop the node, remove its units,
  # release and keys; the data directory stays. (Not run when the node is replaced: the
  # replacement's step did the restart.) A node whose slot changed (a node before it in the
  # topology was removed) has been deployed by its new slot's resource already; the step sees that
  # the host now belongs to another slot and leaves it running.
  provisioner "remote-exec" {
    when = destroy
    inline = [
      "set -eu",
      "S=; [ \"$(id -u)\" -eq 0 ] || S='sudo -n'",
      "if [ -f ${self.input.install_root}/bin/hf-mirror-step.sh ]; then $S env HFM_NODE='${self.input.name}' HFM_SLOT='${self.input.slot}' HFM_ROOT='${self.input.install_root}' HFM_CERTS_DIR='${self.input.remote_certs_dir}' HFM_ANYCAST='${self.input.anycast_address}' sh ${self.input.install_root}/bin/hf-mirror-step.sh decommission; else $S systemctl stop hf-mirror.service hf-mirror.socket || true; fi",
    ]
  }
}

# Evaluates lancache's NixOS module, nix-darwin module and flake without
# nixpkgs (stub lib and packages) and returns { check-name = true|false; }.
# Run: nix-instantiate --eval --strict --json packaging/nixtest/eval.nix
# (packaging's Go test TestNixEval does, and reports every false check).
let
  lib = import ./stub-lib.nix;
  inherit (import ./modules.nix { inherit lib; }) evalModule;

  pkg = { type = "derivation"; name = "lancache-stub"; outPath = "/nix/store/00000000000000000000000000000000-lancache"; };
  pkgs = {
    lancache = pkg;
    stdenv.hostPlatform.system = "x86_64-linux";
  };
  cacheKey = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
  baseConfig = { nix.settings.trusted-public-keys = [ cacheKey ]; };
  # What the nixpkgs nix module itself contributes.
  base = { nix.settings.substituters = lib.mkAfter [ "https://cache.nixos.org/" ]; };

  nixos = user: evalModule { module = import ../nixos/module.nix; inherit user base baseConfig pkgs; };
  darwin = user: evalModule { module = import ../darwin/module.nix; inherit user base baseConfig pkgs; };

  hasInfix = infix: s: builtins.match ".*${escapeRegex infix}.*" s != null;
  escapeRegex = builtins.replaceStrings
    [ "\\" "." "*" "+" "?" "(" ")" "[" "]" "{" "}" "|" "^" "$" ]
    [ "\\\\" "\\." "\\*" "\\+" "\\?" "\\(" "\\)" "\\[" "\\]" "\\{" "\\}" "\\|" "\\^" "\\$" ];
  failedAssertions = c: map (a: a.message) (builtins.filter (a: !a.assertion) (c.assertions or [ ]));

  # Scenario 1: a workstation, defaults.
  ws = (nixos { enable = true; }).config;
  wsSvc = ws.systemd.services.lancache;
  wsExec = wsSvc.serviceConfig.ExecStart;

  # Scenario 2: firewall opened on a loopback HTTP listener.
  fw = (nixos { enable = true; openFirewall = true; }).config;

  # Scenario 3: an appliance with every option set.
  ap = (nixos {
    enable = true;
    openFirewall = true;
    appliance = { enable = true; cacheDir = "/srv/lancache"; maxSize = "500GiB"; };
    fleetKeyFile = "/run/keys/lancache-fleet";
    peers = [ "192.0.2.10:37516" "192.0.2.11:37516" ];
    interfaces = [ "eth0" ];
    name = "pi 100%";
    share = "all";
    settings = { log-level = "debug"; log-format = "json"; no-mdns = false; };
    substituter.priority = 20;
    narinfoCacheNegativeTTL = 60;
  }).config;
  apSvc = ap.systemd.services.lancache;
  apExec = apSvc.serviceConfig.ExecStart;

  # Scenario 4: mistakes the assertions must catch.
  bad = (nixos { enable = true; fleetKeyFile = "/nix/store/abc-fleet"; listenAddress = "localhost"; }).config;

  # Scenario 5: not enabled: no definitions except what others make.
  off = (nixos { }).config;

  # Scenario 6: mdns off, substituter off.
  quiet = (nixos { enable = true; mdns = false; openFirewall = true; substituter.enable = false; }).config;

  # nix-darwin.
  dw = (darwin { enable = true; fleetKeyFile = "/etc/lancache/fleet.key"; appliance.enable = true; }).config;
  dwSvc = dw.launchd.daemons.lancache.serviceConfig;
  dwArgs = dwSvc.ProgramArguments;

  # The flake, with a stub nixpkgs whose buildGoModule returns its arguments.
  systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
  stubPkgsFor = system: {
    buildGo126Module = args: args // { type = "derivation"; name = "${args.pname}-${args.version}"; outPath = "/nix/store/stub-${args.pname}"; };
    mkShell = args: args // { type = "derivation"; name = "shell"; };
    go_1_26 = "go"; gopls = "gopls"; gotools = "gotools"; dpkg = "dpkg"; iproute2 = "iproute2";
    xz = "xz"; zstd = "zstd"; bzip2 = "bzip2";
    stdenv = { isLinux = builtins.match ".*-linux" system != null; hostPlatform.system = system; };
  };
  nixpkgs = { inherit lib; legacyPackages = lib.genAttrs systems stubPkgsFor; };
  flake = import ../../flake.nix;
  outputs = flake.outputs { self = outputs // { outPath = ../..; }; inherit nixpkgs; };
  flPkg = outputs.packages.x86_64-linux.lancache;
  overlaid = outputs.overlays.default (stubPkgsFor "aarch64-linux") { };
  nixosDefault = outputs.nixosModules.default { pkgs = stubPkgsFor "aarch64-linux"; inherit lib; };
  nodeVersion = builtins.head (builtins.match ".*\nvar Version = \"([^\"]+)\".*" (builtins.readFile ../../node.go));
in
{
  # --- NixOS: workstation defaults
  ws-no-assertion-fails = failedAssertions ws == [ ];
  ws-execstart = wsExec == ''/nix/store/00000000000000000000000000000000-lancache/bin/lancache serve "--store-root" "/" "--http" "127.0.0.1:37515" "--quic" ":37516" "--share" "signed" "--state-dir" "/var/lib/lancache" "--trusted-public-keys" "${cacheKey}"'';
  ws-no-fleet = !(hasInfix "--fleet-key" wsExec) && wsSvc.serviceConfig.LoadCredential == [ ];
  ws-substituter-first = ws.nix.settings.substituters == [ "http://127.0.0.1:37515" "https://cache.nixos.org/" ];
  ws-keeps-trusted-keys = !(ws.nix.settings ? trusted-public-keys);
  ws-negative-ttl-untouched = !(ws.nix.settings ? narinfo-cache-negative-ttl);
  ws-no-firewall = !(ws ? networking);
  ws-sysctl = ws.boot.kernel.sysctl."net.core.rmem_max" >= 7500000 && ws.boot.kernel.sysctl."net.core.wmem_max" >= 7500000;
  ws-user = ws.users.users.lancache.isSystemUser && ws.users.users.lancache.group == "lancache" && ws.users.groups ? lancache;
  ws-wanted = wsSvc.wantedBy == [ "multi-user.target" ];
  ws-dirs = wsSvc.serviceConfig.StateDirectory == "lancache" && wsSvc.serviceConfig.CacheDirectory == "lancache" && wsSvc.serviceConfig.User == "lancache";
  ws-hardening = let s = wsSvc.serviceConfig; in
    s.ProtectSystem == "strict" && s.NoNewPrivileges && s.CapabilityBoundingSet == "" && s.AmbientCapabilities == ""
    && s.RestrictAddressFamilies == [ "AF_INET" "AF_INET6" "AF_NETLINK" "AF_UNIX" ]
    && s.ProtectHome && s.PrivateTmp && s.PrivateDevices && s.ProtectKernelTunables && s.ProtectKernelModules
    && s.ProtectControlGroups && s.RestrictNamespaces && s.LockPersonality && s.MemoryDenyWriteExecute
    && s.SystemCallArchitectures == "native" && builtins.elem "@system-service" s.SystemCallFilter
    && builtins.elem "-/nix/store" s.ReadOnlyPaths && builtins.elem "-/nix/var/nix/db" s.ReadOnlyPaths
    && s.ReadWritePaths == [ ];
  ws-no-tmpfiles = !(ws.systemd ? tmpfiles);
  ws-package-in-path = ws.environment.systemPackages == [ pkg ];

  # --- NixOS: firewall
  fw-udp = fw.networking.firewall.allowedUDPPorts == [ 37516 5353 ];
  fw-no-tcp-on-loopback = fw.networking.firewall.allowedTCPPorts == [ ];
  quiet-udp-without-mdns = quiet.networking.firewall.allowedUDPPorts == [ 37516 ];
  quiet-no-mdns-flag = hasInfix ''"--no-mdns"'' quiet.systemd.services.lancache.serviceConfig.ExecStart;
  quiet-no-substituter = quiet.nix.settings.substituters == [ "https://cache.nixos.org/" ];

  # --- NixOS: appliance
  ap-no-assertion-fails = failedAssertions ap == [ ];
  ap-http-on-lan = hasInfix ''"--http" "0.0.0.0:37515"'' apExec;
  ap-cache = hasInfix ''"--cache-dir" "/srv/lancache" "--cache-max-size" "500GiB" "--upstream" "https://cache.nixos.org"'' apExec;
  ap-peers = hasInfix ''"--peer" "192.0.2.10:37516" "--peer" "192.0.2.11:37516"'' apExec;
  ap-interface = hasInfix ''"--interface" "eth0"'' apExec;
  ap-share = hasInfix ''"--share" "all"'' apExec;
  ap-name-escaped = hasInfix ''"--name" "pi 100%%"'' apExec;
  ap-settings = hasInfix ''"--log-format" "json" "--log-level" "debug"'' apExec && !(hasInfix "no-mdns" apExec);
  ap-fleet-credential = apSvc.serviceConfig.LoadCredential == [ "fleet-key:/run/keys/lancache-fleet" ]
    && hasInfix "--fleet-key %d/fleet-key" apExec && !(hasInfix "/run/keys" apExec);
  ap-tcp-open = ap.networking.firewall.allowedTCPPorts == [ 37515 ];
  ap-substituter-loopback-priority = builtins.head ap.nix.settings.substituters == "http://127.0.0.1:37515?priority=20";
  ap-negative-ttl = ap.nix.settings.narinfo-cache-negative-ttl == 60;
  ap-cachedir-writable = apSvc.serviceConfig.ReadWritePaths == [ "/srv/lancache" ]
    && ap.systemd.tmpfiles.rules == [ "d /srv/lancache 0750 lancache lancache - -" ];

  # --- NixOS: assertions and disabled module
  bad-store-fleet-key = builtins.any (m: hasInfix "fleetKeyFile must not be in the Nix store" m) (failedAssertions bad);
  bad-listen-address = builtins.any (m: hasInfix "listenAddress must be HOST:PORT" m) (failedAssertions bad);
  off-defines-nothing = off == { nix.settings.substituters = [ "https://cache.nixos.org/" ]; };

  # --- nix-darwin
  darwin-no-assertion-fails = failedAssertions dw == [ ];
  darwin-program = builtins.head dwArgs == "${pkg}/bin/lancache" && builtins.elemAt dwArgs 1 == "serve";
  darwin-args = builtins.elem "--cache-dir" dwArgs && builtins.elem "/etc/lancache/fleet.key" dwArgs && builtins.elem "0.0.0.0:37515" dwArgs;
  darwin-user = dwSvc.UserName == "_lancache" && dw.users.knownUsers == [ "_lancache" ] && dw.users.users._lancache.uid == 431
    && dw.users.groups._lancache.gid == 431;
  darwin-keepalive = dwSvc.KeepAlive && dwSvc.RunAtLoad;
  darwin-substituter = dw.nix.settings.substituters == [ "http://127.0.0.1:37515" "https://cache.nixos.org/" ];
  darwin-activation = hasInfix "install -d -m 0700 -o _lancache -g _lancache /var/lib/lancache" dw.system.activationScripts.postActivation.text;

  # --- flake
  flake-systems = builtins.attrNames outputs.packages == builtins.sort builtins.lessThan systems
    && builtins.all (s: outputs.packages.${s} ? lancache && outputs.packages.${s} ? default) systems
    && builtins.all (s: outputs.devShells.${s} ? default) systems;
  flake-package = flPkg.pname == "lancache" && flPkg.subPackages == [ "cmd/lancache" ] && flPkg.env.CGO_ENABLED == "0"
    && builtins.elem "-X github.com/lancache/lancache.Version=${nodeVersion}" flPkg.ldflags
    && builtins.match "sha256-[A-Za-z0-9+/]{43}=" flPkg.vendorHash != null;
  flake-version-from-source = flPkg.version == nodeVersion;
  flake-overlay = overlaid.lancache.pname == "lancache";
  flake-modules = builtins.length nixosDefault.imports == 1
    && nixosDefault.services.lancache.package._type == "override"
    && builtins.isFunction outputs.darwinModules.default;
  flake-devshell-linux-tools = builtins.elem "dpkg" outputs.devShells.x86_64-linux.default.packages
    && !(builtins.elem "dpkg" outputs.devShells.aarch64-darwin.default.packages);
}

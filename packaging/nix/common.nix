# Options and command line shared by the NixOS and nix-darwin modules of
# lancache. Uses only `lib.mkOption`, `lib.types` and builtins, so the
# packaging tests can evaluate it with a stub lib (see packaging/nixtest).
{ lib }:

let
  inherit (lib) mkOption mkEnableOption types literalExpression;

  # "127.0.0.1:37515" -> 37515, "[::]:37515" -> 37515, ":37516" -> 37516.
  portOf = addr:
    let m = builtins.match ".*:([0-9]+)" addr;
    in if m == null then null else builtins.fromJSON (builtins.head m);

  # "127.0.0.1:37515" -> "127.0.0.1", ":37516" -> "".
  hostOf = addr:
    let m = builtins.match "(.*):[0-9]+" addr;
    in if m == null then addr else builtins.head m;

  isLoopback = addr:
    let h = hostOf addr;
    in h == "localhost" || h == "[::1]" || builtins.match "127\\..*" h != null;

  # flag = value pairs of `settings` rendered as arguments: true -> "--flag",
  # false/null -> nothing, a list -> the flag repeated.
  settingsArgs = settings:
    builtins.concatLists (map
      (name:
        let v = settings.${name}; in
        if v == true then [ "--${name}" ]
        else if v == false || v == null then [ ]
        else if builtins.isList v then builtins.concatMap (x: [ "--${name}" (toString x) ]) v
        else [ "--${name}" (toString v) ])
      (builtins.attrNames settings));
in
rec {
  inherit portOf hostOf isLoopback settingsArgs;

  defaultStateDir = "/var/lib/lancache";
  defaultCacheDir = "/var/cache/lancache";

  # systemd's quoting for Exec lines (not a shell's): JSON-quote each
  # argument, then escape the specifier (%) and variable ($) characters.
  escapeSystemdExecArg = arg:
    builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON (toString arg));

  # The HTTP address the local Nix should use: a wildcard listener is
  # reached on loopback.
  substituterURL = cfg:
    let
      h = hostOf cfg.listenAddress;
      host = if builtins.elem h [ "" "0.0.0.0" "[::]" "*" ] then "127.0.0.1" else h;
      base = "http://${host}:${toString (portOf cfg.listenAddress)}";
    in
    if cfg.substituter.priority == null then base else "${base}?priority=${toString cfg.substituter.priority}";

  # Options common to both modules. `config` is the system configuration
  # (for nix.settings.trusted-public-keys), `pkgs` for the default package.
  options = { config, pkgs, cfg }: {
    enable = mkEnableOption "lancache, the LAN-first peer cache for Nix";

    package = mkOption {
      type = types.package;
      default = pkgs.lancache;
      defaultText = literalExpression "pkgs.lancache";
      description = "The lancache package (the flake's overlay or module provides it).";
    };

    listenAddress = mkOption {
      type = types.str;
      default = if cfg.appliance.enable then "0.0.0.0:37515" else "127.0.0.1:37515";
      defaultText = literalExpression ''if appliance.enable then "0.0.0.0:37515" else "127.0.0.1:37515"'';
      example = "0.0.0.0:37515";
      description = ''
        Address of the HTTP listener (`--http`): the binary cache Nix uses, the
        status API (`/_lancache/status`) and metrics (`/metrics`). Loopback
        unless this machine also serves machines without lancache (appliance).
      '';
    };

    quicAddress = mkOption {
      type = types.str;
      default = ":37516";
      description = "UDP address of the QUIC peer listener (`--quic`). Peers must reach it.";
    };

    storeRoot = mkOption {
      type = types.str;
      default = "/";
      example = "none";
      description = ''
        Root holding `nix/store` and `nix/var/nix/db` (`--store-root`); `"none"`
        serves no local store (only the NAR cache, peers and upstreams).
      '';
    };

    share = mkOption {
      type = types.enum [ "signed" "all" "none" ];
      default = "signed";
      description = ''
        Which local store paths to offer to peers (`--share`): `signed` only paths
        signed by a trusted key (public content), `all` also paths built here,
        `none` nothing at all, not even the NAR cache (the local Nix is still
        served, and peers and upstreams are still used).
      '';
    };

    trustedPublicKeys = mkOption {
      type = types.listOf types.str;
      default = config.nix.settings.trusted-public-keys;
      defaultText = literalExpression "config.nix.settings.trusted-public-keys";
      description = ''
        Keys whose signatures make a path shareable and a peer's narinfo acceptable
        (`--trusted-public-keys`). Defaults to the keys Nix itself trusts; the
        module leaves `nix.settings.trusted-public-keys` unchanged.
      '';
    };

    peers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "192.0.2.10:37516" ];
      description = "Static peers, `HOST:PORT` of their QUIC listener (`--peer`), for networks mDNS does not reach.";
    };

    mdns = mkOption {
      type = types.bool;
      default = true;
      description = "Find peers with mDNS (UDP 5353). `false` passes `--no-mdns`.";
    };

    interfaces = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "eth0" ];
      description = "Network interfaces for mDNS (`--interface`); empty: every up, multicast-capable, non-loopback one.";
    };

    name = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Name advertised to peers (`--name`); null: the host name.";
    };

    fleetKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/keys/lancache-fleet";
      description = ''
        Path (outside the Nix store, which is world-readable) of the shared fleet
        secret made by `lancache keygen --fleet FILE`. Peers without it are
        refused. As a string, not a Nix path, so it is never copied into the store.
      '';
    };

    appliance = {
      enable = mkEnableOption ''
        appliance mode: an on-disk NAR cache (`cacheDir`) that pulls through from
        `upstreams` and serves the LAN over HTTP (`listenAddress` defaults to
        0.0.0.0:37515)'';

      cacheDir = mkOption {
        type = types.str;
        default = "/var/cache/lancache";
        example = "/srv/lancache";
        description = "On-disk NAR cache (`--cache-dir`); put it on the big disk.";
      };

      maxSize = mkOption {
        type = types.str;
        default = "10GiB";
        example = "500GiB";
        description = "Size bound of the NAR cache (`--cache-max-size`), e.g. `50GiB` or `200GB`.";
      };

      upstreams = mkOption {
        type = types.listOf types.str;
        default = [ "https://cache.nixos.org" ];
        description = "Binary caches to pull through from, tried in order (`--upstream`).";
      };
    };

    settings = mkOption {
      type = types.attrsOf (types.oneOf [ types.bool types.int types.str (types.listOf types.str) ]);
      default = { };
      example = literalExpression ''{ log-level = "debug"; log-format = "json"; }'';
      description = ''
        Further flags of `lancache serve`, by name without dashes: a string or
        number `v` gives `--flag v`, `true` gives `--flag`, `false` nothing, a list
        repeats the flag. They come after the flags set by the options above, so
        a single-valued flag here overrides them.
      '';
    };

    substituter = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Add the local lancache endpoint to `nix.settings.substituters`.";
      };

      priority = mkOption {
        type = types.nullOr types.int;
        default = null;
        example = 10;
        description = ''
          Priority of the local endpoint (lower is tried first). null uses the
          daemon's `nix-cache-info` (`Priority: 30`), ahead of cache.nixos.org (40).
          A number appends `?priority=N` to the substituter URL, overriding it.
        '';
      };
    };

    narinfoCacheNegativeTTL = mkOption {
      type = types.nullOr types.int;
      default = null;
      example = 60;
      description = ''
        If set, `nix.settings.narinfo-cache-negative-ttl` (Nix's default: 3600 s).
        Nix remembers a 404 from every substituter for this long, so a path a
        neighbour fetches a minute later is not asked for again until the TTL
        runs out. Lowering it lets peers' new paths be used sooner; the cost is
        more narinfo requests to every substituter, cache.nixos.org included, for
        paths that really are missing (for example each locally built path,
        every time Nix plans a build).
      '';
    };
  };

  # Arguments of `lancache serve` for a module config, without --fleet-key
  # (each module passes the key its own way).
  serveArgs = { cfg, stateDir }:
    [ "--store-root" cfg.storeRoot
      "--http" cfg.listenAddress
      "--quic" cfg.quicAddress
      "--share" cfg.share
      "--state-dir" stateDir
      "--trusted-public-keys" (builtins.concatStringsSep " " cfg.trustedPublicKeys) ]
    ++ (if cfg.appliance.enable then
      [ "--cache-dir" cfg.appliance.cacheDir "--cache-max-size" cfg.appliance.maxSize ]
      ++ builtins.concatMap (u: [ "--upstream" u ]) cfg.appliance.upstreams
    else [ ])
    ++ builtins.concatMap (p: [ "--peer" p ]) cfg.peers
    ++ builtins.concatMap (i: [ "--interface" i ]) cfg.interfaces
    ++ (if cfg.mdns then [ ] else [ "--no-mdns" ])
    ++ (if cfg.name == null then [ ] else [ "--name" cfg.name ])
    ++ settingsArgs cfg.settings;

  # Checks both modules make; each is { assertion; message; }.
  assertions = cfg: [
    {
      assertion = cfg.fleetKeyFile == null || builtins.substring 0 11 cfg.fleetKeyFile != "/nix/store/";
      message = "services.lancache.fleetKeyFile must not be in the Nix store (it is world-readable); use a path such as /run/keys/lancache-fleet.";
    }
    {
      assertion = portOf cfg.listenAddress != null;
      message = "services.lancache.listenAddress must be HOST:PORT, got \"${cfg.listenAddress}\".";
    }
    {
      assertion = portOf cfg.quicAddress != null;
      message = "services.lancache.quicAddress must be [HOST]:PORT, got \"${cfg.quicAddress}\".";
    }
  ];
}

# The serviceConfig of the NixOS module's unit in two configurations, for
# packaging's TestNixOSUnitVerify (systemd-analyze verify).
let
  lib = import ./stub-lib.nix;
  inherit (import ./modules.nix { inherit lib; }) evalModule;
  pkgs.lancache = { type = "derivation"; name = "lancache"; outPath = "/nix/store/00000000000000000000000000000000-lancache"; };
  baseConfig.nix.settings.trusted-public-keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
  unit = user: (evalModule { module = import ../nixos/module.nix; inherit user baseConfig pkgs; }).config.systemd.services.lancache.serviceConfig;
in
{
  workstation = unit { enable = true; };
  appliance = unit {
    enable = true;
    appliance = { enable = true; cacheDir = "/srv/lancache"; };
    fleetKeyFile = "/run/keys/lancache-fleet";
    settings.log-level = "debug";
  };
}

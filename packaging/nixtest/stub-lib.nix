# A stand-in for the parts of nixpkgs' lib that lancache's Nix files use,
# written with builtins only, so the packaging tests can evaluate the modules
# and the flake without nixpkgs (which cannot be fetched on the build
# machine). Module-system markers (mkIf, mkMerge, mkDefault, mkBefore, ...)
# are kept as tagged attrsets and resolved by ./modules.nix.
let
  mkType = name: check: { _type = "stubType"; inherit name check; };
  isDerivationLike = v: builtins.isAttrs v && (v.type or null) == "derivation";
in
rec {
  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = name: mkOption { type = types.bool; default = false; description = "Whether to enable ${name}."; };
  literalExpression = text: { _type = "literalExpression"; inherit text; };

  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  mkOverride = priority: content: { _type = "override"; inherit priority content; };
  mkDefault = mkOverride 1000;
  mkForce = mkOverride 50;
  mkOrder = priority: content: { _type = "order"; inherit priority content; };
  mkBefore = mkOrder 500;
  mkAfter = mkOrder 1500;

  optional = cond: x: if cond then [ x ] else [ ];
  optionals = cond: xs: if cond then xs else [ ];
  optionalString = cond: s: if cond then s else "";
  concatStringsSep = builtins.concatStringsSep;
  genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
  fakeHash = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

  types = rec {
    bool = mkType "bool" builtins.isBool;
    int = mkType "int" builtins.isInt;
    str = mkType "str" builtins.isString;
    path = mkType "path" (v: builtins.isPath v || (builtins.isString v && builtins.substring 0 1 v == "/"));
    package = mkType "package" (v: isDerivationLike v || builtins.isPath v);
    enum = values: mkType "enum ${builtins.toJSON values}" (v: builtins.elem v values);
    nullOr = t: mkType "null or ${t.name}" (v: v == null || t.check v);
    listOf = t: mkType "list of ${t.name}" (v: builtins.isList v && builtins.all t.check v);
    attrsOf = t: mkType "attrs of ${t.name}" (v: builtins.isAttrs v && builtins.all t.check (builtins.attrValues v));
    oneOf = ts: mkType "one of ${builtins.concatStringsSep ", " (map (t: t.name) ts)}" (v: builtins.any (t: t.check v) ts);
    either = a: b: oneOf [ a b ];
  };
}

// CSS imported for its side effect (esbuild bundles it into main.css).
declare module "*.css";

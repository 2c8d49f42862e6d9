// Paths as a sankey, laid out by d3-sankey and rendered as SVG by Preact (text nodes,
// never markup). Nodes are (step index, name); links sum the sessions of the paths that
// go from one to the next. data-series carries the paths as the API answered them and
// data-links the links drawn.
import { sankey, sankeyLinkHorizontal, type SankeyGraph } from "d3-sankey";
import { useLayoutEffect, useRef } from "preact/hooks";
import { seriesAttr } from "../components/chart";
import type { PathsResult } from "./series";
import { toSeries } from "./series";

interface N { id: string; name: string; step: number }
interface L { source: number; target: number; value: number }
export interface Link { source: string; target: string; value: number }

/** The links of the sankey: step i's node to step i+1's, summed over the paths. */
export function pathLinks(r: PathsResult): Link[] {
  const sums = new Map<string, Link>();
  for (const p of r.paths) {
    for (let i = 0; i + 1 < p.steps.length; i++) {
      const source = `${i}:${p.steps[i]}`, target = `${i + 1}:${p.steps[i + 1]}`;
      const k = JSON.stringify([source, target]);
      const l = sums.get(k);
      if (l) l.value += p.count;
      else sums.set(k, { source, target, value: p.count });
    }
  }
  return [...sums.values()];
}

const COLORS = ["#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];

export function Sankey({ result, since, width = 900 }: { result: PathsResult; since: number; width?: number }) {
  const root = useRef<HTMLDivElement>(null);
  const s = toSeries(result)!;
  const links = pathLinks(result);
  useLayoutEffect(() => {
    root.current?.setAttribute("data-render-ms", (performance.now() - since).toFixed(1));
  });
  const ids = new Map<string, number>();
  const nodes: N[] = [];
  for (const l of links) {
    for (const id of [l.source, l.target]) {
      if (!ids.has(id)) {
        ids.set(id, nodes.length);
        const cut = id.indexOf(":");
        nodes.push({ id, step: Number(id.slice(0, cut)), name: id.slice(cut + 1) });
      }
    }
  }
  const height = Math.max(160, Math.min(600, nodes.length * 28));
  let graph: SankeyGraph<N, L> | null = null;
  if (links.length) {
    graph = sankey<N, L>().nodeWidth(12).nodePadding(12).extent([[1, 1], [width - 1, height - 1]])({
      nodes: nodes.map((n) => ({ ...n })),
      links: links.map((l) => ({ source: ids.get(l.source)!, target: ids.get(l.target)!, value: l.value })),
    });
  }
  const path = sankeyLinkHorizontal<N, L>();
  return (
    <figure class="sankey chart" ref={root} data-series={seriesAttr(s.labels, s.series)}
      data-links={JSON.stringify(links)} data-kind="sankey">
      {graph ? (
        <svg viewBox={`0 0 ${width} ${height}`} width="100%" role="img"
          aria-label={`Paths: ${result.paths.length} paths, ${links.length} links`}>
          <g fill="none">
            {graph.links.map((l, i) => (
              <path key={i} d={path(l) ?? ""} stroke={COLORS[(l.source as N).step % COLORS.length]}
                stroke-opacity="0.35" stroke-width={Math.max(1, l.width ?? 1)}>
                <title>{`${(l.source as N).name} → ${(l.target as N).name}: ${l.value}`}</title>
              </path>
            ))}
          </g>
          <g>
            {graph.nodes.map((n) => (
              <g key={n.id}>
                <rect x={n.x0} y={n.y0} width={(n.x1 ?? 0) - (n.x0 ?? 0)} height={Math.max(1, (n.y1 ?? 0) - (n.y0 ?? 0))}
                  fill={COLORS[n.step % COLORS.length]}>
                  <title>{`${n.name}: ${n.value ?? 0}`}</title>
                </rect>
                <text x={(n.x0 ?? 0) < width / 2 ? (n.x1 ?? 0) + 6 : (n.x0 ?? 0) - 6} y={((n.y0 ?? 0) + (n.y1 ?? 0)) / 2}
                  dy="0.35em" text-anchor={(n.x0 ?? 0) < width / 2 ? "start" : "end"} font-size="12" fill="#111827">
                  {n.name}
                </text>
              </g>
            ))}
          </g>
        </svg>
      ) : <p class="muted">No path of two steps or more in this range.</p>}
    </figure>
  );
}

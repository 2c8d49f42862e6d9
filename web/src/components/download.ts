// Downloads made in the browser: CSV (quoted, with a guard against formula injection)
// and PNG (from a canvas, or an SVG drawn onto one).

export type Cell = string | number | boolean | null | undefined;

/** A CSV cell: quoted when needed; a text starting with = + - @ (or tab/CR) gets a
 * leading ' so that a spreadsheet shows it rather than evaluating it. Numbers as they are. */
export function csvCell(v: Cell): string {
  if (v === null || v === undefined) return "";
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  let s = String(v);
  if (/^[=+\-@\t\r]/.test(s)) s = "'" + s;
  if (/[",\r\n]/.test(s) || s !== s.trim()) s = '"' + s.replace(/"/g, '""') + '"';
  return s;
}

export function toCsv(columns: string[], rows: Cell[][]): string {
  const lines = [columns.map(csvCell).join(",")];
  for (const row of rows) lines.push(row.map(csvCell).join(","));
  return lines.join("\r\n") + "\r\n";
}

function save(name: string, blob: Blob): void {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  a.style.display = "none";
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export function fileName(name: string, ext: string): string {
  const base = name.replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^-+|-+$/g, "") || "aap";
  return base.endsWith("." + ext) ? base : `${base}.${ext}`;
}

export function downloadCsv(name: string, columns: string[], rows: Cell[][]): void {
  save(fileName(name, "csv"), new Blob([toCsv(columns, rows)], { type: "text/csv;charset=utf-8" }));
}

function canvasToPng(name: string, canvas: HTMLCanvasElement): Promise<void> {
  return new Promise((resolve, reject) => {
    canvas.toBlob((blob) => {
      if (!blob) return reject(new Error("the chart could not be turned into a PNG"));
      save(fileName(name, "png"), blob);
      resolve();
    }, "image/png");
  });
}

async function svgToCanvas(svg: SVGSVGElement): Promise<HTMLCanvasElement> {
  const box = svg.getBoundingClientRect();
  const w = Math.max(1, Math.round(box.width));
  const h = Math.max(1, Math.round(box.height));
  const clone = svg.cloneNode(true) as SVGSVGElement;
  clone.setAttribute("xmlns", "http://www.w3.org/2000/svg");
  clone.setAttribute("width", String(w));
  clone.setAttribute("height", String(h));
  const text = new XMLSerializer().serializeToString(clone);
  const url = URL.createObjectURL(new Blob([text], { type: "image/svg+xml" }));
  try {
    const img = new Image();
    img.src = url;
    await img.decode();
    const canvas = document.createElement("canvas");
    const scale = window.devicePixelRatio || 1;
    canvas.width = w * scale;
    canvas.height = h * scale;
    const ctx = canvas.getContext("2d");
    if (!ctx) throw new Error("no 2D canvas");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    return canvas;
  } finally {
    URL.revokeObjectURL(url);
  }
}

/** A PNG of a canvas, an SVG, or the first canvas/SVG inside an element. */
export async function downloadPng(name: string, el: Element): Promise<void> {
  const target = el instanceof HTMLCanvasElement || el instanceof SVGSVGElement
    ? el : el.querySelector("canvas") ?? el.querySelector("svg");
  if (target instanceof HTMLCanvasElement) return canvasToPng(name, target);
  if (target instanceof SVGSVGElement) return canvasToPng(name, await svgToCanvas(target));
  throw new Error("nothing to draw: no canvas or SVG");
}

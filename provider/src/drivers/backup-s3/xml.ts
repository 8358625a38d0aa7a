/**
 * The little XML the S3 API speaks: flat documents of elements with text (ListBucketResult,
 * InitiateMultipartUploadResult, Error, DeleteResult, ...). A small tolerant reader (no DTDs, no
 * namespaces beyond ignoring them) and an escaper for the request bodies we build.
 */

export interface XmlNode {
  name: string;
  children: XmlNode[];
  text: string;
}

const ENTITIES: Record<string, string> = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" };

export function unescapeXml(s: string): string {
  return s.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-z]+);/g, (m, e: string) => {
    if (e[0] === "#") {
      const cp = e[1] === "x" ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10);
      return Number.isFinite(cp) ? String.fromCodePoint(cp) : m;
    }
    return ENTITIES[e] ?? m;
  });
}

export function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;" })[c] as string);
}

/** Parses a document into its root element; throws on a malformed one. */
export function parseXml(doc: string): XmlNode {
  const root: XmlNode = { name: "#document", children: [], text: "" };
  const stack: XmlNode[] = [root];
  const re = /<!\[CDATA\[([\s\S]*?)\]\]>|<(\/?)([A-Za-z_][\w.:-]*)((?:\s+[^>]*?)?)(\/?)>|<\?[\s\S]*?\?>|<!--[\s\S]*?-->|<![^>]*>|([^<]+)/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(doc))) {
    const top = stack[stack.length - 1];
    if (m[1] !== undefined) top.text += m[1];
    else if (m[3] !== undefined) {
      const name = m[3].includes(":") ? m[3].slice(m[3].indexOf(":") + 1) : m[3];
      if (m[2] === "/") {
        if (top.name !== name || stack.length === 1) throw new Error(`malformed XML: unexpected </${name}>`);
        stack.pop();
      } else {
        const node: XmlNode = { name, children: [], text: "" };
        top.children.push(node);
        if (m[5] !== "/") stack.push(node);
      }
    } else if (m[6] !== undefined) top.text += unescapeXml(m[6]);
  }
  if (stack.length !== 1) throw new Error(`malformed XML: <${stack[stack.length - 1].name}> not closed`);
  const el = root.children[0];
  if (!el) throw new Error("malformed XML: no element");
  return el;
}

export function child(n: XmlNode | undefined, name: string): XmlNode | undefined {
  return n?.children.find((c) => c.name === name);
}

export function children(n: XmlNode | undefined, name: string): XmlNode[] {
  return n ? n.children.filter((c) => c.name === name) : [];
}

export function text(n: XmlNode | undefined, name: string): string | undefined {
  const c = child(n, name);
  return c ? c.text : undefined;
}

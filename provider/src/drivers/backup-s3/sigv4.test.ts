import { canonicalQuery, createSigner, EMPTY_SHA256, uriEncode } from "./sigv4";
import { parseXml, text, children } from "./xml";
import { parseS3Address, describeEndpoint } from "./client";

describe("SigV4 for S3", () => {
  test("signs AWS's published GET Object example (S3 API reference, 'Example: GET Object') to its published signature", () => {
    // AWS's documentation example keys (not a real credential).
    const signer = createSigner("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "us-east-1");
    const auth = signer.authorization({
      method: "GET",
      encodedPath: "/test.txt",
      query: {},
      headers: { Host: "examplebucket.s3.amazonaws.com", Range: "bytes=0-9", "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": "20130524T000000Z" },
      payloadSha256: EMPTY_SHA256,
      date: new Date("2013-05-24T00:00:00Z"),
    });
    expect(auth).toBe(
      "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
    );
    expect(auth).not.toContain("wJalr");
  });

  test("URI and query encoding: unreserved characters kept, everything else %XX of its UTF-8 bytes, query sorted, empty values kept", () => {
    expect(uriEncode("a b/ü~._-*", true)).toBe("a%20b/%C3%BC~._-%2A");
    expect(uriEncode("a/b")).toBe("a%2Fb");
    expect(canonicalQuery({ uploads: "", prefix: "x y/", "max-keys": "2" })).toBe("max-keys=2&prefix=x%20y%2F&uploads=");
  });

  test("XML reader: entities, CDATA, namespaces, repeated elements", () => {
    const doc = parseXml(`<?xml version="1.0"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Contents><Key>a&amp;b &lt;c&gt;</Key><Size>3</Size></Contents><Contents><Key><![CDATA[x<y]]></Key></Contents><IsTruncated>false</IsTruncated></ListBucketResult>`);
    expect(children(doc, "Contents").map((c) => text(c, "Key"))).toEqual(["a&b <c>", "x<y"]);
    expect(text(doc, "IsTruncated")).toBe("false");
    expect(() => parseXml("<a><b></a>")).toThrow(/malformed/);
  });

  test("addresses: defaults (TLS on, port 443, us-east-1), prefix, explicit port and tls=false", () => {
    expect(parseS3Address("s3://s3.example.com/backups")).toEqual({ host: "s3.example.com", port: 443, tls: true, bucket: "backups", prefix: "", region: "us-east-1" });
    const e = parseS3Address("s3://127.0.0.1:7480/backups/site-a/nightly?region=eu-1&tls=false");
    expect(e).toEqual({ host: "127.0.0.1", port: 7480, tls: false, bucket: "backups", prefix: "site-a/nightly/", region: "eu-1" });
    expect(describeEndpoint(e)).toBe("s3://127.0.0.1:7480/backups/site-a/nightly");
    expect(() => parseS3Address("s3://h/bucket?tls=maybe")).toThrow(/tls=true or tls=false/);
    expect(() => parseS3Address("s3://h/bucket?foo=1")).toThrow(/unknown address parameter 'foo'/);
  });
});

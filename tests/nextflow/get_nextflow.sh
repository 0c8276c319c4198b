#!/usr/bin/env bash
# The real Nextflow runtime, fetched by its Maven coordinates (tests/nextflow/pom.xml), every jar checked
# against tests/nextflow/nextflow.sha256, started by a launcher script with plain java:
#   tests/nextflow/get_nextflow.sh .venv     ->  .venv/bin/nextflow, jars in .venv/share/nextflow/lib
#   tests/nextflow/get_nextflow.sh --update-checksums .venv   (after changing the pinned version)
# Needs Java >= 17 and mvn. Nothing else is downloaded: the plugin registry and GitHub are not used.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
update=0
if [[ ${1:-} == --update-checksums ]]; then
    update=1
    shift
fi
prefix=$(mkdir -p "${1:?usage: get_nextflow.sh [--update-checksums] PREFIX}" && cd "$1" && pwd)
lib=$prefix/share/nextflow/lib
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

command -v java >/dev/null || { echo "get_nextflow: java not found (Nextflow needs Java >= 17)" >&2; exit 1; }
command -v mvn >/dev/null || { echo "get_nextflow: mvn not found (apt-get install maven)" >&2; exit 1; }

mvn -q -B -Dstyle.color=never -f "$here/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$work/lib" -Dmdep.useRepositoryLayout=false
(cd "$work/lib" && sha256sum -- *.jar | sort -k2) > "$work/sums"
if ((update)); then
    cp "$work/sums" "$here/nextflow.sha256"
fi
if ! diff -q "$here/nextflow.sha256" "$work/sums" >/dev/null; then
    echo "get_nextflow: the jars differ from tests/nextflow/nextflow.sha256:" >&2
    diff "$here/nextflow.sha256" "$work/sums" >&2 || true
    exit 1
fi

rm -rf "$lib"
mkdir -p "$lib" "$prefix/bin"
cp "$work"/lib/*.jar "$lib/"
# the options Nextflow's own launcher passes on Java >= 11 (Groovy and Kryo reach into these packages)
cat > "$prefix/bin/nextflow" <<LAUNCHER
#!/usr/bin/env bash
# Nextflow $(sed -n 's/^.*  nextflow-\(.*\)\.jar$/\1/p' "$work/sums"), from Maven Central (tests/nextflow/get_nextflow.sh)
opens=()
for p in java.lang java.io java.nio java.net java.util java.util.concurrent java.util.concurrent.locks \\
         java.util.concurrent.atomic java.util.regex java.nio.file.spi java.lang.reflect sun.nio.ch sun.nio.fs \\
         sun.net.www.protocol.http sun.net.www.protocol.https sun.net.www.protocol.ftp sun.net.www.protocol.file \\
         jdk.internal.misc jdk.internal.vm; do
    opens+=("--add-opens=java.base/\$p=ALL-UNNAMED")
done
exec java \${NXF_OPTS:-} -Djava.awt.headless=true -Dfile.encoding=UTF-8 -XX:+TieredCompilation \\
    -XX:TieredStopAtLevel=1 "\${opens[@]}" -cp "$lib/*" nextflow.cli.Launcher "\$@"
LAUNCHER
chmod +x "$prefix/bin/nextflow"
echo "get_nextflow: $("$prefix/bin/nextflow" -version 2>/dev/null | sed -n 's/^ *version //p') in $prefix/bin/nextflow" >&2

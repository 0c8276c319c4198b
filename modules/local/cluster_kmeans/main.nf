process CLUSTER_KMEANS {
    tag "all tomograms"
    label 'process_medium'

    input:
    tuple path(embeddings), path(table)
    path stars  // <stem>_instance_regions.star of predict: the clustered STAR files keep their columns
    val settings

    output:
    path "out/*", optional: true, emit: results
    path "vis/*", optional: true, emit: figures
    path "versions.yml", emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    subtomo-kmeans \\
        --input-dir . \\
        --output-dir out \\
        --vis-dir vis \\
        ${settings} \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        subtomo-embed: \$(subtomo-embed --version | sed 's/subtomo-embed //')
    END_VERSIONS
    """

    stub:
    """
    mkdir -p out vis
    touch out/kmeans.stub vis/kmeans.stub.png
    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        subtomo-embed: \$(subtomo-embed --version | sed 's/subtomo-embed //')
    END_VERSIONS
    """
}

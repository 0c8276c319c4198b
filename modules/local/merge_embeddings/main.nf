process MERGE_EMBEDDINGS {
    tag "all tomograms"
    label 'process_single'

    input:
    path per_tomogram, stageAs: 'per_tomogram/*'
    val settings

    output:
    tuple path('embeddings.h5'), path('embeddings_table.csv'), emit: merged
    path "versions.yml", emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    subtomo-merge \\
        --input-dir per_tomogram \\
        --output-dir . \\
        ${settings} \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        subtomo-embed: \$(subtomo-embed --version | sed 's/subtomo-embed //')
    END_VERSIONS
    """

    stub:
    """
    touch embeddings.h5 embeddings_table.csv
    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        subtomo-embed: \$(subtomo-embed --version | sed 's/subtomo-embed //')
    END_VERSIONS
    """
}

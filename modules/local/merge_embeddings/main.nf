process MERGE_EMBEDDINGS {
    tag "all tomograms"
    label 'process_single'

    input:
    path per_tomogram, stageAs: 'per_tomogram/*'
    val settings

    output:
    tuple path('embeddings.h5'), path('embeddings_table.csv'), emit: merged
    tuple val("${task.process}"), eval('subtomo-embed --version'), emit: versions  // main.nf collects them

    script:
    def args = task.ext.args ?: ''
    """
    subtomo-merge \\
        --input-dir per_tomogram \\
        --output-dir . \\
        ${settings} \\
        ${args}
    """

    stub:
    """
    touch embeddings.h5 embeddings_table.csv
    """
}
